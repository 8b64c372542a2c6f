import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from sslseg.experiments import pipeline, sweep
from sslseg.report.html import SECTIONS, write_report

CONFIG = {
    "data": "synthetic-echo",
    "data_options": {"num_cases": 8, "num_frames": 6},
    "image_size": 32,
    "model_options": {"base_channels": 4, "depth": 2},
    "methods": ["none", "simclr"],
    "budgets": [1, 2],
    "seeds": [0],
    "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 0},
    "finetune": {"steps": 2, "batch_size": 2, "val_every": 1},
    "baseline": {"enabled": True, "augment": 1.5},
}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cfg = out / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    sweep.run_sweep(cfg, out / "run")
    return out / "run"


def _results(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path / "results.csv", newline="")))


def test_resume_after_kill_has_no_duplicate_or_missing_rows(tmp_path, monkeypatch, finished_sweep):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    calls = []
    real = pipeline.run_finetune

    def killed_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweep, "run_finetune", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "run")
    assert len({r["run"] for r in _results(tmp_path / "run")}) == 1  # only the finished run's rows

    calls.clear()
    monkeypatch.setattr(sweep, "run_finetune", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    sweep.run_sweep(cfg, tmp_path / "run")
    n_runs = 2 * 2 + 1  # (none, simclr) x (1, 2) + the supervised baseline
    assert len(calls) == n_runs - 1  # the finished run was not redone
    rows = _results(tmp_path / "run")
    keys = [(r["run"], r["case_id"]) for r in rows]
    assert len(keys) == len(set(keys))  # no duplicate
    assert {r["run"] for r in rows} == {r["run"] for r in _results(finished_sweep)}  # none missing
    assert len(rows) == len(_results(finished_sweep))


def test_pretraining_reused_and_subsets_nested(finished_sweep):
    assert [p.name for p in (finished_sweep / "pretrain").iterdir()] == ["simclr_unet_seed0"]
    one = json.loads((finished_sweep / "splits" / "labelled_1_seed0.json").read_text())["case_ids"]
    two = json.loads((finished_sweep / "splits" / "labelled_2_seed0.json").read_text())["case_ids"]
    assert len(one) == 1 and len(two) == 2 and set(one) <= set(two)
    splits = json.loads((finished_sweep / "splits" / "splits.json").read_text())
    assert all(splits[c] == "train" for c in two)
    test_ids = {c for c, s in splits.items() if s == "test"}
    assert {r["case_id"] for r in _results(finished_sweep)} == test_ids


def test_bad_sweep_config_names_the_problem(tmp_path):
    bad = dict(CONFIG, methods=["none", "mae"])
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="unknown method 'mae'; choose one of none, "):
        sweep.run_sweep(p, tmp_path / "x")


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.ids.add(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src", ""))


def test_report_has_every_section_with_embedded_figures(finished_sweep):
    path = write_report(finished_sweep)
    p = _Sections()
    p.feed(path.read_text())
    assert set(SECTIONS) <= p.ids
    assert len(p.images) >= 4 and all(s.startswith("data:image/png;base64,") for s in p.images)
    for name in ("dice_vs_labels.png", "hd95_vs_labels.png", "overlays.png", "training_curves.png"):
        assert (finished_sweep / "figures" / name).is_file()


def test_report_renders_in_headless_chromium(finished_sweep, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs the Debian package)")
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
         (finished_sweep / "report.html").resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (1600, 1200)
    assert img.std() > 10 and len(np.unique(img)) > 20  # text, tables and figures, not a blank page
