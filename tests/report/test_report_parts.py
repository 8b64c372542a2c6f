"""The report's answer to "does pretraining pay off?": gains by labelled subset, the same frames for every
method, what a rerun needs; and that a browser renders those parts."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sslseg.environment import git_commit
from sslseg.evaluate import inference
from sslseg.experiments import sweep
from sslseg.report import compare
from sslseg.report.html import write_report

CONFIG = {
    "data": "synthetic-echo",
    "data_options": {"num_cases": 8, "num_frames": 4},
    "image_size": 32,
    "model_options": {"base_channels": 4, "depth": 2},
    "methods": ["none", "simclr"],
    "budgets": [1],
    "seeds": [0, 1],
    "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 0},
    "finetune": {"steps": 3, "batch_size": 2, "val_every": 1},
    "baseline": {"enabled": True, "augment": 1.5},
}


def _dark_pixels(model, frames, normalizer, image_size, batch_size=32, device="cpu"):
    """A stand-in for the networks' predictions (a few steps predict nothing): dark pixels, which differ
    from frame to frame, so that each frame has its own Dice."""
    f = np.asarray(frames, dtype=float)
    return (f < np.median(f, axis=(-2, -1), keepdims=True)).astype(np.int64)


@pytest.fixture(scope="module")
def two_subsets(tmp_path_factory):
    out = tmp_path_factory.mktemp("subsets")
    cfg = out / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "predict_frames", _dark_pixels)  # evaluation
        mp.setattr(compare, "predict_frames", _dark_pixels)  # the overlays' frames
        sweep.run_sweep(cfg, out / "run", write_report_at_end=False)
    return out / "run"


@pytest.fixture(scope="module")
def report(two_subsets):
    return write_report(two_subsets)


def _frame_dice(per_frame: Path) -> dict[tuple[str, int], float]:
    by: dict[tuple[str, int], list[float]] = {}
    for r in csv.DictReader(open(per_frame, newline="")):
        by.setdefault((r["case_id"], int(r["index"])), []).append(float(r["dice"]))
    return {k: float(np.nanmean(v)) for k, v in by.items()}


def test_every_method_on_the_same_frames_titled_with_that_frames_dice(two_subsets):
    data = np.load(two_subsets / "examples" / "unet.npz")
    columns = [str(c) for c in data["columns"]]
    runs = {"random init": "none_unet_1_seed0", "simclr": "simclr_unet_1_seed0"}
    sup = [c for c in columns if c.startswith("supervised")]
    assert columns[:2] == ["random init", "simclr"] and len(sup) == 1
    runs[sup[0]] = "supervised_unet_100pct_seed0"
    frames = [(str(data[f"info_{i}"][0]), int(data[f"info_{i}"][1])) for i in range(len(data["rows"]))]
    # the frames are random init's best, median and worst
    ref = _frame_dice(two_subsets / "runs" / "none_unet_1_seed0" / "per_frame.csv")
    ranked = sorted((v, k) for k, v in ref.items())
    assert frames[0] == ranked[-1][1] and frames[-1] == ranked[0][1]
    assert len({float(data[f"dice_{i}_0"]) for i in range(len(frames))}) == len(frames)  # frames differ
    # each panel's Dice is that frame's own, as the evaluation scored it for that run
    for j, col in enumerate(columns):
        scored = _frame_dice(two_subsets / "runs" / runs[col] / "per_frame.csv")
        for i, key in enumerate(frames):
            assert float(data[f"dice_{i}_{j}"]) == pytest.approx(scored[key], abs=1e-6), (col, key)
            assert data[f"pred_{i}_{j}"].shape == data[f"gt_{i}"].shape


def test_every_folder_records_what_a_rerun_needs(two_subsets):
    folders = [two_subsets, *(two_subsets / "runs").iterdir(), *(two_subsets / "pretrain").iterdir()]
    commit, _ = git_commit()
    for d in folders:
        prov = json.loads((d / "provenance.json").read_text())
        assert prov["packages"]["torch"] == torch.__version__ and prov["packages"]["monai"]
        assert prov["git_commit"] == commit and prov["command"]
        assert (d / "config.yaml").is_file()
    if shutil.which("git") and commit is not None:
        head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert commit == head
    pre = json.loads((two_subsets / "pretrain" / "simclr_unet_seed0" / "provenance.json").read_text())["resolved"]
    opts = pre["pretrain"]["options"]
    assert opts["temperature"] == 0.1 and opts["augment"]["crop_scale"] == [0.3, 1.0]  # defaults left to the code
    run = two_subsets / "runs" / "simclr_unet_1_seed0"
    ft = json.loads((run / "provenance.json").read_text())["resolved"]["finetune"]
    transfer = json.loads((run / "transfer.json").read_text())
    assert ft["freeze_encoder_steps"] == transfer["freeze_encoder_steps"] and ft["steps"] == 3
    assert ft["labelled_cases"] == json.loads((run / "labelled.json").read_text())["case_ids"]
    assert ft["augment"]["strength"] == 1.0


def test_report_gives_gains_by_subset_with_an_interval_and_every_config(two_subsets, report):
    page = report.read_text()
    assert "95% CI across 2 labelled subsets" in page and "One labelled subset" not in page
    assert not re.search(r"p = 0\.000", page)
    n_runs = len(list((two_subsets / "runs").iterdir())) + len(list((two_subsets / "pretrain").iterdir()))
    config = page[page.index("<section id='config'>"):page.index("<section id='environment'>")]
    assert config.count("<details>") == n_runs == 8  # 2 pretraining, 3 x 2 fine-tuning
    assert "temperature: 0.1" in config and "freeze_encoder_steps" in config
    env = page[page.index("<section id='environment'>"):]
    assert "torch" in env and ((git_commit()[0] or "not a git work tree") in env)
    for name in ("gains_by_subset.png", "overlays_unet.png", "training_curves.png"):
        assert (two_subsets / "figures" / name).is_file()


def test_report_warns_when_there_is_one_subset(two_subsets, tmp_path):
    rows = list(csv.DictReader(open(two_subsets / "results.csv", newline="")))
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["seed"] == "0")
    page = write_report(tmp_path).read_text()
    assert "One labelled subset" in page and "one labelled subset: no interval" in page


PROBE = """<script>
window.addEventListener('load', () => {
  const out = {};
  for (const id of ['gains', 'overlays', 'config', 'environment']) {
    const s = document.getElementById(id);
    const imgs = s ? [...s.querySelectorAll('img')] : [];
    out[id] = {height: s ? s.getBoundingClientRect().height : 0,
               images: imgs.map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width]),
               details: s ? s.querySelectorAll('details').length : 0};
  }
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_new_report_parts_render_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs the Debian package)")
    page = report.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--window-size=1200,1600", "--dump-dom", probe.resolve().as_uri()],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
    assert found, "the page's load handler did not run"
    parts = json.loads(found.group(1).replace("&quot;", '"'))
    for name in ("gains", "overlays"):
        assert parts[name]["height"] > 200
        assert parts[name]["images"], name
        for complete, natural, shown in parts[name]["images"]:
            assert complete and natural > 300 and shown > 300  # decoded and laid out, not a broken icon
    assert parts["config"]["details"] == 8 and parts["config"]["height"] > 200
    assert parts["environment"]["height"] > 100
