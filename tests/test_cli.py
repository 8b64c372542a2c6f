"""The command line: bad input ends with one line and exit code 2; a tiny end-to-end run."""

import csv
import subprocess
import sys

import pytest
import torch

from sslseg.cli import main

TINY = ["--image-size", "32", "--batch-size", "4", "--set", "model.options.base_channels=4",
        "--set", "model.options.depth=2", "--set", "data.options.num_cases=8",
        "--set", "data.options.num_frames=6"]


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["pretrain", "--data", "nosuch", "--method", "simclr", "--out", "x"], "unknown data set 'nosuch'; choose one of"),
        (["pretrain", "--data", "synthetic-echo", "--method", "mae", "--out", "x"], "unknown pretraining method 'mae'; choose one of"),
        (["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--arch", "vnet", "--out", "x"], "unknown architecture 'vnet'; choose one of"),
        (["finetune", "--data", "synthetic-echo", "--labels", "0", "--out", "x"], "label budget '0' is not valid"),
        (["finetune", "--data", "synthetic-echo", "--init", "missing.pt", "--out", "x"], "checkpoint not found: missing.pt"),
        (["evaluate", "--data", "synthetic-echo", "--model", "missing.pt", "--out", "x"], "checkpoint not found: missing.pt"),
        (["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--out", "x", "--set", "pretrain.nosuch=1"], "unknown key 'nosuch'"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in _err_line(capsys)


def test_budget_larger_than_training_cases(capsys, tmp_path):
    rc = main(["finetune", "--data", "synthetic-echo", "--labels", "50", "--out", str(tmp_path / "ft"), *TINY])
    assert rc == 2
    assert "larger than the" in _err_line(capsys)


def test_pretrain_finetune_evaluate_end_to_end(tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--out", str(pre), "--steps", "4", *TINY]) == 0
    for name in ("checkpoint.pt", "config.yaml", "metrics.csv", "log.txt", "splits.json"):
        assert (pre / name).is_file(), name
    ckpt = torch.load(pre / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == "sslseg/1" and ckpt["stage"] == "pretrain"
    # pretraining never saw a validation or test case
    assert set(ckpt["splits"].values()) == {"train", "val", "test"}

    ft = tmp_path / "ft"
    assert main(["finetune", "--data", "synthetic-echo", "--init", str(pre / "checkpoint.pt"), "--labels", "2",
                 "--out", str(ft), "--steps", "6", *TINY]) == 0
    out = capsys.readouterr()
    ftc = torch.load(ft / "checkpoint.pt", weights_only=True)
    assert ftc["splits"] == ckpt["splits"]  # fine-tuning reused the pretraining split
    labelled = set(ftc["labelled_cases"])
    assert len(labelled) == 2 and all(ckpt["splits"][c] == "train" for c in labelled)

    ev = tmp_path / "ev"
    assert main(["evaluate", "--data", "synthetic-echo", "--model", str(ft / "checkpoint.pt"), "--out", str(ev)]) == 0
    rows = list(csv.DictReader(open(ev / "per_case.csv")))
    test_ids = {c for c, s in ckpt["splits"].items() if s == "test"}
    assert {r["case_id"] for r in rows} == test_ids
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert "Dice" in capsys.readouterr().out
    del out


def test_console_script_reports_errors_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sslseg.cli", "finetune", "--data", "bogus", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_sweep_summary_never_averages_data_sets_together(tmp_path, capsys):
    """Issue 25 item 4: echo 0.9 and MRI 0.5 are two rows, not one of 0.700; an older results.csv (without
    the fine-tuning mode columns) still reads."""
    from sslseg.cli import _check_results, _print_summary
    from sslseg.experiments.sweep import OPTIONAL_KEYS, RESULT_KEYS
    from sslseg.io.tables import write_table

    rows = [{"method": "none", "arch": "unet", "dataset": ds, "budget": "1", "labelled_cases": 1, "seed": s,
             "case_id": f"c{s}", "dice": d + 0.01 * s, "hd95": 1.0} for ds, d in (("echo", 0.9), ("mri", 0.5))
            for s in range(2)]
    path = write_table(tmp_path / "results.csv", rows, [k for k in RESULT_KEYS if k not in OPTIONAL_KEYS],
                       extrasaction="ignore")
    _check_results(path)
    _print_summary(path)
    text = capsys.readouterr().out
    assert "unet · echo" in text and "unet · mri" in text
    assert "0.905" in text and "0.505" in text and "0.705" not in text
