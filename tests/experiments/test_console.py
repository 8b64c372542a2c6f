"""What a training command shows on the console (piped: capsys is not a terminal), and when it takes its folder.

The summary before training names the data, the split, the labels, the model with its parameter count, the
device and the steps; the lines after it give the outcome; a resumed run says so on the console.
"""

from __future__ import annotations

import json
import sys

import pytest

from sslseg.cli import main
from sslseg.models.build import build_model

SYN = ["--data", "synthetic-echo", "--image-size", "32", "--batch-size", "2", "--steps", "2",
       "--set", "model.options.base_channels=4", "--set", "model.options.depth=2",
       "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4", "--set", "data.options.size=32"]


def split_sizes(path) -> tuple[int, int, int]:
    """Training, validation and test cases counted from a written ``splits.json``, independently of the summary."""
    data = json.loads(path.read_text())
    sides = list((data.get("splits") or data).values()) if isinstance(data, dict) else []
    sides = [s for s in sides if s in ("train", "val", "test")]
    return sides.count("train"), sides.count("val"), sides.count("test")


def test_finetune_prints_its_summary_before_and_its_outcome_after(tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", *SYN, "--labels", "2", "--set", "finetune.val_every=1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    n_train, n_val, n_test = split_sizes(out / "splits.json")
    assert n_train + n_val + n_test == 6 and n_val > 0
    params = sum(p.numel() for p in build_model("unet", 1, 2, base_channels=4, depth=2).parameters())
    expected = [
        "data:    synthetic-echo, 6 cases, 24 frames (12 labelled), resized to 32 x 32",
        f"split:   {n_train} training, {n_val} validation, {n_test} test cases ({out / 'splits.json'})",
        f"labels:  2 of the {n_train} training cases (4 labelled frames)",
        "mode:    supervised (chosen by auto)",
        f"model:   unet, {params:,} parameters, 1 input channel, 2 classes (background included); "
        "random initialisation",
        "device:  cpu, 1 process, precision 32-true",
        f"train:   2 steps, batch 2, lr 0.001; validation every 1 step on {n_val} case{'s' if n_val != 1 else ''}",
    ]
    assert lines[:len(expected)] == expected
    # after training: the outcome, then the selection (the weights kept) and the checkpoint
    done = [i for i, s in enumerate(lines) if s.startswith("finetune random: 2 steps done in ")]
    best = [i for i, s in enumerate(lines) if s.startswith("best validation Dice ") and s.endswith("(the weights saved)")]
    assert done and best and done[0] > len(expected) - 1 and best[0] > done[0]
    assert lines[-1] == f"fine-tuned checkpoint: {out / 'checkpoint.pt'}"
    assert not (out / ".lock").exists()  # a finished folder holds only its outputs


def test_pretrain_prints_its_summary_before_and_its_outcome_after(tmp_path, capsys):
    out = tmp_path / "pt"
    assert main(["pretrain", *SYN, "--method", "simclr", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    n_train, n_val, n_test = split_sizes(out / "splits.json")
    assert lines[0] == "data:    synthetic-echo, 6 cases, 24 frames (12 labelled), resized to 32 x 32"
    assert lines[1] == f"split:   {n_train} training, {n_val} validation, {n_test} test cases ({out / 'splits.json'})"
    assert lines[2].startswith(f"method:  simclr, on {4 * n_train} frames of the {n_train} training cases (")
    assert lines[3].startswith("model:   unet, ") and lines[4] == "device:  cpu, 1 process, precision 32-true"
    assert lines[5].startswith("train:   2 steps, batch 2, lr ")
    assert any(s.startswith("pretrain simclr: 2 steps done in ") and ", loss " in s for s in lines[6:])
    assert lines[-1] == f"pretrained checkpoint: {out / 'checkpoint.pt'}"
    assert not (out / ".lock").exists()


def test_a_resumed_run_says_so_on_the_console(tmp_path, capsys, monkeypatch):
    import sslseg.experiments.pipeline as pipeline

    out = tmp_path / "ft"
    argv = ["finetune", *SYN, "--steps", "4", "--labels", "2", "--set", "finetune.val_every=2", "--out", str(out)]
    real = pipeline._mean_dice

    def interrupted(*a, **k):  # the first validation (step 2) is where the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_mean_dice", interrupted)
    assert main(argv) == 130
    assert (out / "last.pt").is_file() and not (out / ".lock").exists()  # removed on the way out too
    capsys.readouterr()
    monkeypatch.setattr(pipeline, "_mean_dice", real)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"finetune random: resumed from {out / 'last.pt'} at step 1" in text.splitlines()


def test_a_busy_folder_is_refused_before_the_data_or_the_training_code_is_read(tmp_path, capsys, monkeypatch):
    import sslseg.engine
    from sslseg.data import registry
    from sslseg.experiments.runfolder import lock

    read = []
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: read.append(a) or pytest.fail("data read"))
    # the training code and torch (imported with sslseg.engine.distributed) load after the refusal, or never:
    # an import of either fails here
    monkeypatch.setitem(sys.modules, "sslseg.experiments.pipeline", None)
    monkeypatch.setitem(sys.modules, "sslseg.engine.distributed", None)
    monkeypatch.delattr(sslseg.engine, "distributed", raising=False)
    with lock(tmp_path / "run"):
        assert main(["finetune", *SYN, "--out", str(tmp_path / "run")]) == 2
        assert main(["pretrain", *SYN, "--method", "simclr", "--out", str(tmp_path / "run")]) == 2
        assert (tmp_path / "run" / ".lock").is_file()  # the refused ones left the owner's lock alone
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("is in use by process" in e for e in err), err
    assert read == []
    assert not (tmp_path / "run" / ".lock").exists()


def screen(raw: str) -> list[str]:
    """The non-blank lines a terminal shows at the end of ``raw``: a carriage return goes back to the line's
    start and later text overwrites it (how a progress bar redraws and erases itself)."""
    import re

    raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # colour and cursor-visibility codes
    lines, cur, col = [], [], 0
    for ch in raw:
        if ch == "\n":
            lines.append("".join(cur).rstrip())
            cur, col = [], 0
        elif ch == "\r":
            col = 0
        else:
            cur[col:col + 1] = [ch]
            col += 1
    lines.append("".join(cur).rstrip())
    return [s for s in lines if s]


def test_on_a_terminal_the_summary_and_the_outcome_stay_on_screen(tmp_path, monkeypatch):
    """A pseudo-terminal: the progress bar draws itself there (no plain progress lines); what is left on
    screen at the end must still say what ran and how it ended."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows, 120 columns
    tty = os.fdopen(slave, "w", buffering=1)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal's other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setattr(sys, "stderr", tty)
    out = tmp_path / "ft"
    try:
        rc = main(["finetune", *SYN, "--labels", "2", "--out", str(out)])  # validation every 100 steps
        tty.flush()
    finally:
        tty.close()
        reader.join(10)
        os.close(master)
    assert rc == 0
    raw = b"".join(chunks).decode()
    shown = screen(raw)
    # a bar drew itself (tqdm's "2/2 [time]"), not the plain lines of a pipe
    assert "2/2 [" in raw and not any(s.startswith("finetune random: step") for s in shown)
    n_val = split_sizes(out / "splits.json")[1]
    assert shown[0].startswith("data:    synthetic-echo, 6 cases")
    assert shown[6] == f"train:   2 steps, batch 2, lr 0.001; validation at the end on {n_val} case{'s' if n_val != 1 else ''}"
    assert any(s.startswith("finetune random: 2 steps done in ") for s in shown), shown
    assert any(s.startswith("best validation Dice ") for s in shown) and shown[-1].startswith("fine-tuned checkpoint:")
