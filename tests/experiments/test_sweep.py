import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from sslseg.experiments import pipeline, sweep, sweep_config, sweep_plan
from sslseg.report.html import SECTIONS, write_report

CONFIG = {
    "data": {"spec": "synthetic-echo", "options": {"num_cases": 8, "num_frames": 6}, "image_size": 32},
    "model": {"options": {"base_channels": 4, "depth": 2}},
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


@pytest.mark.parametrize("kill_at", ["finetune-start", "pretraining-step", "finetune-step", "before-done"])
def test_resume_after_kill_has_no_duplicate_or_missing_rows(tmp_path, monkeypatch, finished_sweep, kill_at):
    """Killed at several moments (before a run, inside pretraining, inside fine-tuning, after a run's
    rows were written but before its completion marker), then resumed with the same command."""
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    real_ft, real_fit, real_write_json = pipeline.run_finetune, pipeline.fit, sweep.write_json
    fits, fts = [], []

    def fit(task, next_batch, *a, **k):
        # fit calls in order: none/1, none/2, simclr pretraining, simclr/1, ...
        fits.append(1)
        target = {"pretraining-step": 3, "finetune-step": 4}.get(kill_at)

        def batch(step):
            if len(fits) == target and step >= 1:
                raise KeyboardInterrupt  # after one optimiser step
            return next_batch(step)

        return real_fit(task, batch, *a, **k)

    def finetune(*a, **k):
        fts.append(1)
        if kill_at == "finetune-start" and len(fts) == 2:
            raise KeyboardInterrupt
        return real_ft(*a, **k)

    def write_json(path, obj):
        if kill_at == "before-done" and len(fts) == 2 and Path(path).name == "done.json":
            raise KeyboardInterrupt  # rows.csv is written, done.json is not
        return real_write_json(path, obj)

    monkeypatch.setattr(pipeline, "fit", fit)
    monkeypatch.setattr(sweep, "run_finetune", finetune)
    monkeypatch.setattr(sweep, "write_json", write_json)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, tmp_path / "run")
    finished = {r["run"] for r in _results(tmp_path / "run")}
    assert len(finished) == {"pretraining-step": 2, "finetune-step": 2}.get(kill_at, 1)  # finished runs only
    if kill_at == "pretraining-step":
        assert not (tmp_path / "run" / "pretrain" / "simclr_unet_seed0" / "checkpoint.pt").exists()

    monkeypatch.setattr(pipeline, "fit", real_fit)
    monkeypatch.setattr(sweep, "write_json", real_write_json)
    fts.clear()
    monkeypatch.setattr(sweep, "run_finetune", lambda *a, **k: (fts.append(1), real_ft(*a, **k))[1])
    sweep.run_sweep(cfg, tmp_path / "run")
    n_runs = 2 * 2 + 1  # (none, simclr) x (1, 2) + the supervised baseline
    assert len(fts) == n_runs - len(finished)  # finished runs were not redone
    rows = _results(tmp_path / "run")
    keys = [(r["run"], r["case_id"]) for r in rows]
    assert len(keys) == len(set(keys))  # no duplicate
    assert {r["run"] for r in rows} == {r["run"] for r in _results(finished_sweep)}  # none missing
    assert len(rows) == len(_results(finished_sweep))


def test_several_data_sets_in_one_sweep(tmp_path):
    data = {**CONFIG["data"], "spec": ["synthetic-echo", {"spec": "synthetic-mri",
                                                          "options": {"num_cases": 6, "num_slices": 4, "size": 32}}]}
    cfg = dict(CONFIG, methods=["none"], budgets=[1], baseline={"enabled": False}, data=data)
    p = tmp_path / "two.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    sweep.run_sweep(p, out)
    rows = _results(out)
    assert {r["dataset"] for r in rows} == {"synthetic-echo", "synthetic-mri"}
    assert {r["run"] for r in rows} == {"synthetic-echo_none_unet_1_seed0", "synthetic-mri_none_unet_1_seed0"}
    for tag, n in (("synthetic-echo", 8), ("synthetic-mri", 6)):
        splits = json.loads((out / "splits" / tag / "splits.json").read_text())
        assert len(splits) == n
        test_ids = {c for c, s in splits.items() if s == "test"}
        assert {r["case_id"] for r in rows if r["dataset"] == tag} == test_ids
    page = (out / "report.html").read_text()
    assert "synthetic-echo" in page and "synthetic-mri" in page


@pytest.mark.parametrize("bad, match", [
    ({"data": ["synthetic-echo", "synthetic-echo"]}, "listed twice"),
    ({"data": [{"path": "x"}]}, "neither a spec nor"),
    ({"data": ["synthetic-echo", "nonsense:/x"]}, "unknown data set 'nonsense:/x'"),
])
def test_bad_data_entries(tmp_path, bad, match):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(dict(CONFIG, **bad)))
    with pytest.raises(ValueError, match=match):
        sweep_config.load_sweep_config(p)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    sw = sweep_config.load_sweep_config(path)
    for data in sweep_config.datasets(sw):
        for arch in sw.archs:
            rc = sweep_config.run_config(sw, arch, sw.seeds[0], data)
            assert rc.data.spec == data[0] and rc.model.arch == arch


def test_cli_sweep_then_report(tmp_path, capsys):
    from sslseg.cli import main

    cfg = dict(CONFIG, methods=["none"], budgets=[1], baseline={"enabled": False})
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(p), "--out", str(tmp_path / "run")]) == 0
    (tmp_path / "run" / "report.html").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "report:" in out and "none" in out
    # a change that would make the finished runs stale is refused, in one line naming the key
    p.write_text(yaml.safe_dump(dict(cfg, finetune={**cfg["finetune"], "lr": 0.01})))
    assert main(["sweep", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune.lr: 0.001 there, 0.01 now" in err[0], err


def test_demo_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    from sslseg.experiments import demo

    tiny = sweep_config.sweep_config(dict(CONFIG, budgets=[1]))
    monkeypatch.setattr(demo, "demo_config", lambda quick: tiny)
    rows = demo.run_demo(tmp_path / "demo", quick=True)
    assert {r["method"] for r in rows} == {"none", "simclr", "supervised"}
    out = capsys.readouterr().out
    assert "simclr" in out and any(f"{w} random init" in out for w in ("ahead of", "behind", "level with"))
    assert "one labelled subset: no interval" in out  # one seed: the gain is stated without a CI
    assert ("loses to random init" in out) == ("What decides the pay-off" in out)  # the pointer when it loses
    for name in ("results.csv", "report.html", "figures/dice_vs_labels.png"):
        assert (tmp_path / "demo" / name).is_file()


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
    with pytest.raises(ValueError, match="unknown pretraining method 'mae'; choose one of none, "):
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
    for name in ("dice_vs_labels.png", "hd95_vs_labels.png", "overlays_unet.png", "training_curves.png",
                 "gains_by_subset.png"):
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


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_build_every_method(path):
    # every (arch, method) of the file is built with the options it will get, as the sweep resolves them:
    # a sweep must not die at its second method after hours on the first
    from sslseg.models.build import build_model
    from sslseg.pretrain.build import build_method, resolve_options

    sw = sweep_config.load_sweep_config(path)
    for data in sweep_config.datasets(sw):
        for arch in sw.archs:
            rc = sweep_config.run_config(sw, arch, sw.seeds[0], data)
            axis = "time" if data[0].startswith(("echonet", "camus", "synthetic-echo")) else "slice"
            for method in sw.methods:
                if method == "none":
                    continue
                options, _ = resolve_options(method, rc.pretrain.options, axis)
                model = build_model(arch, in_channels=1, num_classes=2, **rc.model.options)
                assert build_method(method, model, **options) is not None


def test_pretrain_options_per_method():
    from sslseg.pretrain.build import method_options

    opts = {"simclr": {"temperature": 0.2}, "byol": {"momentum": 0.99}}
    assert method_options("simclr", opts) == {"temperature": 0.2}
    assert method_options("byol", opts) == {"momentum": 0.99}
    assert method_options("regression", opts) == {}
    # shared keys reach every method; a method's own entry overrides them
    assert method_options("simclr", {"proj_dim": 64, "simclr": {"proj_dim": 32}}) == {"proj_dim": 32}
    with pytest.raises(ValueError, match=r"pretrain.options.temperature: method 'byol' takes no option 'temperature'"):
        method_options("byol", {"temperature": 0.1})


def test_sweep_refuses_an_option_one_method_lacks_before_any_run(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(dict(CONFIG, methods=["none", "simclr", "byol"], pretrain={"options": {"temperature": 0.1}})))
    with pytest.raises(ValueError, match="method 'byol' takes no option 'temperature'"):
        sweep_config.load_sweep_config(p)


def test_parallel_sweep_with_shared_pretraining_matches_sequential(tmp_path, monkeypatch):
    """jobs=2 (forked or spawned workers) gives the rows one process gives; pretrain_seed pretrains once."""
    base = dict(CONFIG, seeds=[0, 1], pretrain_seed=0, budgets=[1],
                baseline={"enabled": False, "augment": 1.5})
    rows = {}
    for name, jobs in (("one", 1), ("fork", 2), ("spawn", 2)):
        # spawn is what macOS, Windows and CUDA machines get
        monkeypatch.setattr(sweep, "_is_macos", lambda spawn=(name == "spawn"): spawn)
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(dict(base, jobs=jobs)))
        out = tmp_path / name
        sweep.run_sweep(cfg, out)
        assert [p.name for p in (out / "pretrain").iterdir()] == ["simclr_unet_seed0"]
        rows[name] = sorted((r["method"], r["seed"], r["case_id"], round(float(r["dice"]), 5))
                            for r in _results(out))
    assert {(m, s) for m, s, *_ in rows["one"]} == {("none", "0"), ("none", "1"), ("simclr", "0"), ("simclr", "1")}
    assert rows["one"] == rows["fork"] == rows["spawn"]
    # the workers' console output went to each run's own file
    assert all(p.stat().st_size > 0 for p in (tmp_path / "spawn" / "runs").glob("*/output.txt"))


def test_sweep_crosses_methods_with_modes_and_pairs_them_by_subset(tmp_path, monkeypatch):
    """modes cross the plain methods; a method+mode entry stands alone; auto resolves; the report pairs
    each semi-supervised cell with random init and with pretraining alone on the same labelled subset."""
    from sslseg.finetune import modes
    from sslseg.finetune.modes import AUTO_MAX_CASES
    from sslseg.report.tables import pretrained_alone, subset_gains

    # today auto is supervised (the measured best): listed with supervised, it adds no run
    sw0 = sweep_config.validate(sweep_config.sweep_config({**CONFIG, "modes": ["supervised", "auto"]}))
    assert modes.AUTO_MODE != "supervised" or len(sweep_plan.plan(sw0, 5, lambda k: True)) == len(
        sweep_plan.plan(sweep_config.validate(sweep_config.sweep_config(CONFIG)), 5, lambda k: True))
    AUTO_MODE = "unimatch"  # were a semi-supervised mode measured best
    monkeypatch.setattr(modes, "AUTO_MODE", AUTO_MODE)

    sw = sweep_config.validate(sweep_config.sweep_config({**CONFIG, "methods": ["none", "simclr", "byol+bcp"],
                                                            "modes": ["supervised", "auto"], "budgets": [1]}))
    runs = sweep_plan.plan(sw, 5, lambda k: True)
    fine = [(r["method"], r["init"], r["mode"]) for r in runs if r["kind"] == "finetune" and r["k"] == 1]
    assert fine == [("none", "none", "supervised"), (f"none+{AUTO_MODE}", "none", AUTO_MODE),
                    ("simclr", "simclr", "supervised"), (f"simclr+{AUTO_MODE}", "simclr", AUTO_MODE),
                    ("byol+bcp", "byol", "bcp")]
    # nothing unlabelled beside the labelled cases, or more labelled cases than auto's limit: auto is
    # supervised, listed once
    assert [r["mode"] for r in sweep_plan.plan(sw, 5, lambda k: False) if r["init"] == "none"] == ["supervised"] * 2
    sw.budgets = [AUTO_MAX_CASES + 1]
    assert [r["mode"] for r in sweep_plan.plan(sw, 5, lambda k: True) if r["method"] == "none" or r["init"] == "none"
            and r["kind"] == "finetune"] == ["supervised"]
    for bad, match in ((["supervised", "supervised"], "listed twice"), (["fixmatch"], "unknown fine-tuning mode")):
        with pytest.raises(ValueError, match=match):
            sweep_config.validate(sweep_config.sweep_config({**CONFIG, "modes": bad}))
    with pytest.raises(ValueError, match="sweep.finetune.mode has no effect"):
        sweep_config.validate(sweep_config.sweep_config({**CONFIG, "finetune": {"mode": "bcp"}}))

    rows = []
    for seed, (none, pre, semi) in enumerate([(0.5, 0.6, 0.8), (0.4, 0.6, 0.7), (0.6, 0.6, 0.9)]):
        for method, dice in (("none", none), ("simclr", pre), ("simclr+bcp", semi)):
            rows += [{"arch": "unet", "method": method, "labelled_cases": 1, "seed": seed, "case_id": c,
                      "dice": dice + d} for c, d in (("a", 0.01), ("b", -0.01))]
    vs_random = {g["method"]: g for g in subset_gains(rows)}
    vs_pre = {g["method"]: g for g in subset_gains(rows, reference=pretrained_alone)}
    assert vs_random["simclr+bcp"]["gains"] == pytest.approx({"0": 0.3, "1": 0.3, "2": 0.3})
    assert set(vs_pre) == {"simclr+bcp"} and vs_pre["simclr+bcp"]["reference"] == "simclr"
    assert vs_pre["simclr+bcp"]["gains"] == pytest.approx({"0": 0.2, "1": 0.1, "2": 0.3})
    assert pretrained_alone("none+bcp") is None and pretrained_alone("simclr") is None
