"""A corpus of bad input: every case ends with exit code 2, one line naming the file or key, and no output changed.

Each case builds what it needs under a temporary folder, runs the command line
in-process and compares every file under that folder before and after (a run
folder's ``.lock`` aside: the lock itself is how a folder is owned).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslseg.cli import main
from sslseg.engine.checkpoint import save_checkpoint
from sslseg.experiments.config import RunConfig, to_dict
from sslseg.models.build import build_model

SYN = ["--data", "synthetic-echo", "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4",
       "--set", "data.options.size=32", "--image-size", "32", "--steps", "2", "--batch-size", "2",
       "--set", "model.options.base_channels=4", "--set", "model.options.depth=2"]
FT = ["finetune", *SYN, "--labels", "1"]
PT = ["pretrain", *SYN, "--method", "simclr"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def png(path: Path, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)).save(path)
    return path


def checkpoint(path: Path, **change) -> Path:
    """A tiny fine-tuned ``sslseg/1`` checkpoint (untrained weights: enough for the checks before prediction)."""
    kwargs = {"in_channels": 1, "num_classes": 2, "base_channels": 4, "depth": 2}
    model = build_model("unet", **kwargs)
    extra = {"stage": "finetune", "splits": {}, "preprocess": {"normalizer": {"mean": 0.5, "std": 0.2, "scale": 255.0},
                                                                "image_size": 32, "native_size": None}}
    save_checkpoint(path, model, "unet", {**kwargs, **change}, to_dict(RunConfig()), **extra)
    return path


def folder_data(root: Path, table: str | bytes | None = None) -> Path:
    for name in ("a", "b"):
        png(root / "images" / f"{name}.png")
        png(root / "masks" / f"{name}.png")
    if table is not None:
        write(root / "cases.csv", table)
    return root


def folder_spec(t: Path, table: str | bytes) -> list[str]:
    return ["data", "folder:" + str(folder_data(t / "d", table))]


def decathlon(root: Path, training) -> Path:
    write(root / "dataset.json", json.dumps({"name": "t", "modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "fg"},
                                            "training": training}))
    return root


def link_out(root: Path, outside: Path) -> Path:
    folder_data(root)
    png(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "images" / "c.png")
    return root


def nifti_5d(path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 2, 2), np.float32), np.eye(4)), path)
    return path


def pickled_code(path: Path) -> Path:
    torch.save({"format": "sslseg/1", "thing": Path("x")}, path)  # a global that weights_only refuses
    return path


def sweep_yaml(t: Path, text: str) -> list[str]:
    return ["sweep", str(write(t / "sweep.yaml", text)), "--out", str(t / "sw")]


def yaml_run(t: Path, text: str, stage=FT) -> list[str]:
    i = stage.index("--steps")  # so that the YAML's steps stand
    return [*stage[:i], *stage[i + 2:], "--config", str(write(t / "c.yaml", text)), "--out", str(t / "run")]


def busy(t: Path) -> list[str]:
    """A run folder whose lock another holder has (here: an open descriptor of this process)."""
    import fcntl

    (t / "run").mkdir()
    fd = os.open(t / "run" / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"process 1")
    fcntl.flock(fd, fcntl.LOCK_EX)
    busy.fds.append(fd)
    return [*FT, "--out", str(t / "run")]


busy.fds = []


def other_config(t: Path) -> list[str]:
    cfg = to_dict(RunConfig())
    write(t / "run" / "config.yaml", json.dumps(cfg))  # JSON is YAML
    write(t / "run" / "labelled.json", "{}")
    return [*FT, "--out", str(t / "run")]


# id -> (setup: tmp folder -> argv, text the one line must contain)
CASES = {
    # flags
    "steps -5": (lambda t: [*FT, "--steps", "-5", "--out", str(t / "o")], "finetune.steps = -5"),
    "steps 0": (lambda t: [*PT, "--steps", "0", "--out", str(t / "o")], "pretrain.steps = 0"),
    "batch-size 0": (lambda t: [*FT, "--batch-size", "0", "--out", str(t / "o")], "finetune.batch_size = 0"),
    "batch-size -1": (lambda t: [*PT, "--batch-size", "-1", "--out", str(t / "o")], "pretrain.batch_size = -1"),
    "lr 0": (lambda t: [*FT, "--lr", "0", "--out", str(t / "o")], "finetune.lr = 0"),
    "lr -1": (lambda t: [*PT, "--lr", "-1", "--out", str(t / "o")], "pretrain.lr = -1"),
    "seed -1": (lambda t: [*FT, "--seed", "-1", "--out", str(t / "o")], "seed = -1"),
    "image-size 0": (lambda t: [*FT, "--image-size", "0", "--out", str(t / "o")], "data.image_size = 0"),
    "image-size -3": (lambda t: [*FT, "--image-size", "-3", "--out", str(t / "o")], "data.image_size = -3"),
    "image-size 7": (lambda t: [*FT, "--image-size", "7", "--batch-size", "1", "--out", str(t / "o")],
                     "data.image_size = 7"),
    "devices 0": (lambda t: [*FT, "--devices", "0", "--out", str(t / "o")], "devices = 0"),
    "epochs 0": (lambda t: [*FT, "--set", "finetune.epochs=0", "--out", str(t / "o")], "finetune.epochs = 0"),
    "steps not a number": (lambda t: [*FT, "--steps", "many", "--out", str(t / "o")], "--steps"),
    "precision unknown": (lambda t: [*FT, "--precision", "64", "--out", str(t / "o")], "--precision"),
    "unknown command": (lambda t: ["train"], "train"),
    "labels 0": (lambda t: [*FT, "--labels", "0", "--out", str(t / "o")], "'0'"),
    "labels abc": (lambda t: [*FT, "--labels", "abc", "--out", str(t / "o")], "'abc'"),
    "init missing": (lambda t: [*FT, "--init", str(t / "no.pt"), "--out", str(t / "o")], "no.pt"),
    "init not a checkpoint": (lambda t: [*FT, "--init", str(write(t / "init.pt", "hello")), "--out", str(t / "o")],
                              "init.pt"),
    "init holds code": (lambda t: [*FT, "--init", str(pickled_code(t / "code.pt")), "--out", str(t / "o")],
                        "code.pt"),
    "unknown arch": (lambda t: [*FT, "--arch", "vnet", "--out", str(t / "o")], "'vnet'"),
    "unknown method": (lambda t: [*PT[:-1], "mae", "--out", str(t / "o")], "'mae'"),
    "unknown data set": (lambda t: ["finetune", "--data", "nosuch", "--out", str(t / "o")], "'nosuch'"),
    # --set
    "set loss": (lambda t: [*FT, "--set", "finetune.loss=focal", "--out", str(t / "o")], "finetune.loss = 'focal'"),
    "set augment": (lambda t: [*FT, "--set", "finetune.augment=-1", "--out", str(t / "o")], "finetune.augment = -1"),
    "set val_fraction": (lambda t: [*FT, "--set", "data.val_fraction=1.5", "--out", str(t / "o")],
                         "data.val_fraction = 1.5"),
    "set weight_decay": (lambda t: [*PT, "--set", "pretrain.weight_decay=-1", "--out", str(t / "o")],
                         "pretrain.weight_decay = -1"),
    "set num_cases abc": (lambda t: [*FT, "--set", "data.options.num_cases=abc", "--out", str(t / "o")],
                          "num_cases = 'abc'"),
    "set size 1": (lambda t: [*FT, "--set", "data.options.size=1", "--out", str(t / "o")], "size = 1"),
    "set num_frames 0": (lambda t: [*FT, "--set", "data.options.num_frames=0", "--out", str(t / "o")],
                         "num_frames = 0"),
    "set unknown option": (lambda t: [*FT, "--set", "data.options.nosuch=1", "--out", str(t / "o")], "'nosuch'"),
    "set unknown key": (lambda t: [*FT, "--set", "model.nosuch=1", "--out", str(t / "o")], "'nosuch'"),
    "set without =": (lambda t: [*FT, "--set", "seed", "--out", str(t / "o")], "'seed'"),
    "batch-size huge": (lambda t: [*FT, "--batch-size", "100000000", "--out", str(t / "o")],
                        "finetune.batch_size = 100000000"),
    "pretrain batch-size huge": (lambda t: [*PT, "--batch-size", "100000000", "--out", str(t / "o")],
                                 "pretrain.batch_size = 100000000"),
    "set size huge": (lambda t: [*FT, "--set", "data.options.size=100000", "--out", str(t / "o")], "size=100000"),
    "set freeze fraction": (lambda t: [*FT, "--set", "finetune.freeze_encoder_fraction=2", "--out", str(t / "o")],
                            "finetune.freeze_encoder_fraction = 2"),
    # --config
    "yaml steps list": (lambda t: yaml_run(t, "finetune: {steps: [1, 2]}\n"), "finetune.steps = [1, 2]"),
    "yaml section 5": (lambda t: yaml_run(t, "finetune: 5\n"), "finetune = 5"),
    "yaml lr fast": (lambda t: yaml_run(t, "finetune: {lr: fast}\n"), "finetune.lr = 'fast'"),
    "yaml syntax": (lambda t: yaml_run(t, "seed: [1,\n  model: {\n"), "c.yaml"),
    "yaml top-level list": (lambda t: yaml_run(t, "- 1\n- 2\n"), "c.yaml"),
    "yaml unknown key": (lambda t: yaml_run(t, "nosuch: 1\n"), "'nosuch'"),
    "yaml seed -3": (lambda t: yaml_run(t, "seed: -3\n"), "seed = -3"),
    "yaml latin-1": (lambda t: yaml_run(t, "data: {spec: caf\xe9}\n".encode("latin-1")), "c.yaml"),
    "yaml missing": (lambda t: [*FT, "--config", str(t / "none.yaml"), "--out", str(t / "o")], "none.yaml"),
    "yaml bool steps": (lambda t: yaml_run(t, "pretrain: {steps: true}\n", PT), "pretrain.steps = True"),
    # sweep
    "sweep budgets 3": (lambda t: sweep_yaml(t, "budgets: 3\n"), "budgets = 3"),
    "sweep seeds 1": (lambda t: sweep_yaml(t, "seeds: 1\n"), "seeds = 1"),
    "sweep baseline true": (lambda t: sweep_yaml(t, "baseline: true\n"), "baseline = True"),
    "sweep archs string": (lambda t: sweep_yaml(t, "archs: unet\n"), "archs = 'unet'"),
    "sweep unknown method": (lambda t: sweep_yaml(t, "methods: [mae]\n"), "'mae'"),
    "sweep budget 0": (lambda t: sweep_yaml(t, "budgets: [0]\n"), "budget 0"),
    "sweep seed -1": (lambda t: sweep_yaml(t, "seeds: [-1]\n"), "-1"),
    "sweep image_size 4": (lambda t: sweep_yaml(t, "data: {image_size: 4}\n"), "image_size = 4"),
    "sweep finetune steps": (lambda t: sweep_yaml(t, "finetune: {steps: fast}\n"), "finetune.steps = 'fast'"),
    # data
    "data unknown": (lambda t: ["data", "nosuch"], "'nosuch'"),
    "data num_cases abc": (lambda t: ["data", "synthetic-echo", "--set", "data.options.num_cases=abc"], "num_cases = 'abc'"),
    "data size 1": (lambda t: ["data", "synthetic-echo", "--set", "data.options.size=1"], "size = 1"),
    "data size huge": (lambda t: ["data", "synthetic-echo", "--set", "data.options.size=100000"], "size=100000"),
    "data num_cases huge": (lambda t: ["data", "synthetic-mri", "--set", "data.options.num_cases=100000000"],
                            "num_cases=100000000"),
    "data image-size 0": (lambda t: ["data", "synthetic-echo", "--image-size", "0"], "image_size = 0"),
    "data folder missing": (lambda t: ["data", f"folder:{t / 'none'}"], "none"),
    "data export is a file": (lambda t: ["data", "synthetic-echo", "--export", str(write(t / "f.txt", "x"))],
                              "f.txt"),
    # folder reader: cases.csv
    "cases.csv latin-1": (lambda t: folder_spec(t, 'file,case_id\na.png,p\xe9'.encode('latin-1')),
                          "cases.csv"),
    "cases.csv short row": (lambda t: folder_spec(t, 'file,case_id,split\na.png\n'),
                            "cases.csv line 2"),
    "cases.csv extra field": (lambda t: folder_spec(t, 'file,case_id\na.png,p,x\n'),
                              "cases.csv line 2"),
    "cases.csv dotdot": (lambda t: folder_spec(t, 'file,case_id\n../../../a.png,p\n'),
                         "cases.csv line 2"),
    "cases.csv absolute": (lambda t: folder_spec(t, 'file,case_id\n/etc/a.png,p\n'),
                           "cases.csv line 2"),
    "cases.csv no column": (lambda t: folder_spec(t, 'name,case_id\na.png,p\n'),
                            "cases.csv"),
    "folder link outside": (lambda t: ["data", f"folder:{link_out(t / 'd', t / 'elsewhere')}"], "c.png"),
    # decathlon reader: dataset.json
    "dataset.json image 5": (lambda t: ["data", f"decathlon:{decathlon(t / 'd', [{'image': 5}])}"],
                             "training[0].image"),
    "dataset.json absolute": (lambda t: ["data", f"decathlon:{decathlon(t / 'd', [{'image': '/etc/x.nii.gz'}])}"],
                              "training[0].image"),
    "dataset.json dotdot": (lambda t: ["data", f"decathlon:{decathlon(t / 'd', [{'image': '../x.nii.gz'}])}"],
                            "training[0].image"),
    "dataset.json broken": (lambda t: ["data", f"decathlon:{write(t / 'd' / 'dataset.json', '{').parent}"],
                            "dataset.json"),
    "dataset.json no image": (lambda t: ["data", f"decathlon:{decathlon(t / 'd', [{'label': 'x'}])}"],
                              "dataset.json"),
    # echonet reader
    "echonet no FileList": (lambda t: ["data", f"echonet:{(t / 'e').mkdir() or t / 'e'}"], "FileList.csv"),
    "echonet FileList columns": (lambda t: ["data", "echonet:" + str(write(t / "e" / "FileList.csv", "Name,EF\nx,1\n").parent)],
                                 "FileList.csv"),
    # evaluate / predict / export / demo
    "evaluate not a checkpoint": (lambda t: ["evaluate", "--data", "synthetic-echo", "--model",
                                             str(write(t / "m.pt", "x")), "--out", str(t / "o")], "m.pt"),
    "evaluate code checkpoint": (lambda t: ["evaluate", "--data", "synthetic-echo", "--model",
                                            str(pickled_code(t / "m.pt")), "--out", str(t / "o")], "m.pt"),
    "evaluate out is a file": (lambda t: ["evaluate", "--data", "synthetic-echo", "--model", str(checkpoint(t / "m.pt")),
                                          "--out", str(write(t / "f.txt", "x"))], "f.txt"),
    "predict out is a file": (lambda t: ["predict", "--model", str(checkpoint(t / "m.pt")), str(png(t / "i.png")),
                                         "--out", str(write(t / "f.txt", "x"))], "f.txt"),
    "predict batch-size 0": (lambda t: ["predict", "--model", str(checkpoint(t / "m.pt")), str(png(t / "i.png")),
                                        "--batch-size", "0", "--out", str(t / "o")], "--batch-size 0"),
    "predict overlap 1.5": (lambda t: ["predict", "--model", str(checkpoint(t / "m.pt")), str(png(t / "i.png")),
                                       "--overlap", "1.5", "--out", str(t / "o")], "--overlap 1.5"),
    "predict heart rate -10": (lambda t: ["predict", "--model", str(checkpoint(t / "m.pt")), str(png(t / "i.png")),
                                          "--max-heart-rate", "-10", "--out", str(t / "o")], "--max-heart-rate -10"),
    "predict bad device": (lambda t: ["predict", "--model", str(checkpoint(t / "m.pt")), str(png(t / "i.png")),
                                      "--device", "tpu9", "--out", str(t / "o")], "--device"),
    "predict mismatched kwargs": (lambda t: ["predict", "--model", str(checkpoint(t / "m.pt", base_channels=8)),
                                             str(png(t / "i.png")), "--out", str(t / "o")], "model_kwargs"),
    "export out is a folder": (lambda t: ["export", "--model", str(checkpoint(t / "m.pt")), "--out",
                                          str((t / "dir").mkdir() or t / "dir")], "dir"),
    "export missing model": (lambda t: ["export", "--model", str(t / "none.pt")], "none.pt"),
    "demo out is a file": (lambda t: ["demo", "--out", str(write(t / "f.txt", "x"))], "f.txt"),
    "report foreign results.csv": (lambda t: ["report", str(write(t / "sw" / "results.csv", "a,b\n1,2\n").parent)],
                                   "results.csv"),
    "folder 5-D NIfTI": (lambda t: ["data", "folder:" + str(nifti_5d(t / "d" / "images" / "v.nii.gz").parent.parent)],
                         "v.nii.gz"),
    # run folders
    "run folder in use": (busy, "in use"),
    "run folder other config": (other_config, "different configuration"),
}
if torch.cuda.is_available():
    del CASES["predict bad device"]
else:
    CASES["predict cuda without GPU"] = (
        lambda t: ["predict", "--model", str(checkpoint(t / "m.pt")), str(png(t / "i.png")), "--device", "cuda",
                   "--out", str(t / "o")], "--device cuda")


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links too) and a digest of its bytes; run-folder locks left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == ".lock" or (p.is_dir() and not p.is_symlink()):
            continue
        out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest() if p.exists() else "dangling"
    return out


def test_corpus_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / ".cache"))
    setup, needle = CASES[name]
    work = tmp_path / "w"
    work.mkdir()
    argv = setup(work)
    before = tree(work)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    finally:
        while busy.fds:
            os.close(busy.fds.pop())
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err  # one line, no traceback
    assert needle in err[0], err[0]
    assert tree(work) == before  # nothing written, nothing replaced
