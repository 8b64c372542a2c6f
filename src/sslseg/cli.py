"""Command line: each subcommand parses, builds, calls the library.

Errors in what the user typed or gave end with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .engine.precision import PRECISIONS
from .errors import UserError


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one (not None/False/[]); ``{methods}``, ``{archs}``, ``{data}`` filled
    from the registries only when help is printed (they import torch); epilogs kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        for key, names in _LISTS.items():
            if key in text:
                text = text.replace(key, names())
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _choices(module: str, registry: str) -> str:
    """The names in a registry, for help texts (imported only when help is printed)."""
    import importlib

    return getattr(importlib.import_module(module), registry).choices()


_LISTS = {"{methods}": lambda: _choices("sslseg.pretrain.build", "METHODS"),
          "{modes}": lambda: _choices("sslseg.finetune.modes", "MODES"),
          "{archs}": lambda: _choices("sslseg.models.build", "MODELS"),
          "{data}": lambda: _choices("sslseg.data.registry", "DATASETS")}

DATA_HELP = "data set spec: one of {data} (sslseg data --list)"
EXAMPLES = {
    "demo": "sslseg demo --quick --out demo-quick",
    "data": "sslseg data synthetic-echo --export exported/\n  sslseg data echonet:/data/EchoNet-Dynamic\n  "
            "sslseg data --list",
    "pretrain": "sslseg pretrain --data echonet:/data/EchoNet-Dynamic --method simclr --arch deeplabv3 "
                "--out runs/simclr --steps 2000 --batch-size 64",
    "finetune": "sslseg finetune --data echonet:/data/EchoNet-Dynamic --init runs/simclr/checkpoint.pt "
                "--labels 5% --out runs/ft-5pct",
    "sweep": "sslseg sweep configs/echonet_contrastive_echo.yaml --out runs/payoff --set 'seeds=[0,1,2]'",
    "report": "sslseg report runs/payoff",
    "evaluate": "sslseg evaluate --data echonet:/data/EchoNet-Dynamic --model runs/ft-5pct/checkpoint.pt "
                "--out runs/ft-5pct/eval --postprocess largest_component",
    "predict": "sslseg predict --model runs/ft-5pct/checkpoint.pt study.avi dicoms/ --out predictions/",
    "export": "sslseg export --model runs/ft-5pct/checkpoint.pt --format onnx",
    "methods": "sslseg methods",
    "modes": "sslseg modes",
    "archs": "sslseg archs",
}


def _sub(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows defaults and ends with an example."""
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_Help,
                          epilog=f"example:\n  {EXAMPLES[name]}")


def _common(p: argparse.ArgumentParser) -> None:
    from .experiments.config import DataConfig
    from .experiments.config import FinetuneConfig as F
    from .experiments.config import PretrainConfig as P
    from .experiments.config import RunConfig as R

    g = p.add_argument_group("common")
    g.add_argument("--steps", type=int,
                   help=f"optimiser steps, overrides --epochs (config default: {P.steps} pretrain, {F.steps} finetune)")
    g.add_argument("--epochs", type=int, help="epochs over the training images")
    g.add_argument("--batch-size", type=int, help=f"images per optimiser step, the global batch over all devices "
                                                  f"(config default: {P.batch_size} pretrain, {F.batch_size} finetune)")
    g.add_argument("--lr", type=float, help=f"peak learning rate, AdamW (config default: {P.lr:g} pretrain, "
                                            f"{F.lr:g} finetune)")
    g.add_argument("--image-size", type=int,
                   help=f"square side the images are resized to (config default: {DataConfig.image_size})")
    # no defaults here: a flag overrides --config only when given (the defaults live in experiments/config.py)
    g.add_argument("--seed", type=int, help=f"seed of the labelled subset, initialisation and batches (config default: {R.seed})")
    g.add_argument("--devices", type=int,
                   help="processes on this machine (GPUs, or CPU processes without a GPU); --batch-size stays the "
                        f"global batch, split between them (config default: {R.devices})")
    g.add_argument("--num-nodes", type=int,
                   help=f"machines, each running --devices processes (torchrun; config default: {R.num_nodes})")
    g.add_argument("--precision", choices=list(PRECISIONS),
                   help=f"numeric precision of training; 16-mixed needs a GPU (config default: {R.precision})")
    g.add_argument("--config", help="YAML file with any config fields (applied before --set)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set model.options.base_channels=32")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a run in --out made with a different configuration")
    g.add_argument("--print-config", action="store_true",
                   help="print the fully resolved configuration (defaults included) as YAML and exit")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .experiments.config import DataConfig, EvaluateConfig, FinetuneConfig, ModelConfig

    arch_help = f"architecture: one of {{archs}} (sslseg archs; config default: {ModelConfig.arch})"
    ap = _Parser(prog="sslseg", description="Self-supervised pretraining and label-efficient segmentation.",
                 formatter_class=_Help, epilog="start with:\n  sslseg demo --quick\n  sslseg COMMAND --help")
    ap.add_argument("--version", action="version", version=f"sslseg {__version__}")
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback (and its chain) of an error that is otherwise one line")
    sub = ap.add_subparsers(dest="command", required=True)

    p = _sub(sub, "demo", "the whole pipeline on built-in synthetic echo")
    p.add_argument("--out", default="sslseg-demo", help="folder for results.csv, figures and report.html")
    p.add_argument("--quick", action="store_true", help="a smaller run (about 2 minutes alone on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets and training")

    p = _sub(sub, "data", "summarise a data set; --export writes what the model sees; --list names them all")
    p.add_argument("spec", nargs="?", help=DATA_HELP)
    p.add_argument("--list", action="store_true", help="list the data sets that can be read, one line each")
    p.add_argument("--export", metavar="DIR", help="write every labelled frame and mask, as the model sees them")
    p.add_argument("--image-size", type=int, default=DataConfig.image_size, help="square side for --export")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the data section, spelt as in a run's config, e.g. --set data.options.num_cases=8")

    p = _sub(sub, "pretrain", "self-supervised pretraining")
    p.add_argument("--data", help=DATA_HELP + "; required unless --config sets data.spec")
    p.add_argument("--method", help="pretext task: one of {methods} (sslseg methods); required unless --config sets "
                                    "pretrain.method")
    p.add_argument("--arch", help=arch_help)
    p.add_argument("--out", help="run folder: checkpoint.pt, config.yaml, metrics.csv, log.txt (required)")
    _common(p)

    p = _sub(sub, "finetune", "fine-tuning on a label budget, supervised or semi-supervised")
    p.add_argument("--data", help=DATA_HELP + "; required unless --config sets data.spec")
    p.add_argument("--arch", help=arch_help)
    p.add_argument("--init", help="an sslseg checkpoint, a DeepLabV3 state_dict in torchvision's naming, or "
                                  f"'random' (config default: {FinetuneConfig.init})")
    p.add_argument("--labels", help=f"labelled cases: a count (4) or a percentage (5%%) (config default: "
                                    f"{FinetuneConfig.labels})")
    p.add_argument("--mode", help="fine-tuning mode: auto or one of {modes} (sslseg modes; config default: "
                                  f"{FinetuneConfig.mode})")
    p.add_argument("--out", help="run folder: checkpoint.pt, config.yaml, metrics.csv, log.txt (required)")
    _common(p)

    p = _sub(sub, "sweep", "label-efficiency study from a YAML config (resumable)")
    p.add_argument("config", help="sweep YAML (see configs/): data, archs, methods, budgets, seeds, ...")
    p.add_argument("--out", help="sweep folder (required); the same command resumes an interrupted sweep, and one "
                                 "with more seeds, budgets or methods runs only the new runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep key, e.g. --set 'seeds=[0,1,2]' --set data.options.num_cases=16")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved sweep configuration (defaults included) as YAML and exit")

    p = _sub(sub, "report", "rebuild report.html and figures of a sweep folder")
    p.add_argument("dir", help="a sweep folder (with results.csv)")

    p = _sub(sub, "evaluate", "Dice and HD95 per test case")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--model", required=True, help="a fine-tuned checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="which cases of the checkpoint's split to score")
    p.add_argument("--out", required=True, help="folder for per_case.csv and per_frame.csv")
    p.add_argument("--convention", default=EvaluateConfig.convention, choices=["auto", "volume", "frame"],
                   help="auto: volumes by 3D Dice/HD95 per volume, cines by the mean of their frames")
    p.add_argument("--hd95-empty", default=EvaluateConfig.hd95_empty, choices=["diagonal", "nan"],
                   help="HD95 with an empty prediction: the image diagonal in mm (counted), or left out")
    p.add_argument("--postprocess", default="none",
                   help="clean predictions before scoring: none, all, or a comma list of largest_component, "
                        "fill_holes (MONAI)")

    p = _sub(sub, "predict", "masks for new images, volumes, DICOM and videos (+ echo measurements)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (PNG/TIFF, NIfTI, MetaImage/NRRD, DICOM, AVI)")
    p.add_argument("--model", required=True, help="a fine-tuned checkpoint")
    p.add_argument("--out", required=True, help="folder for masks, predictions.csv and echo measurements")
    p.add_argument("--tta", action="store_true", help="average with the left-right flip; writes an uncertainty map")
    p.add_argument("--prepare", default="auto", choices=["auto", "echo", "tile", "resize"],
                   help="how frames reach the model: echo = find the ultrasound sector, crop, mask and resize "
                        "it as EchoNet-Dynamic did; tile = sliding windows at the input's own pixel scale; "
                        "resize = the whole frame to the training size; auto (default) = echo for echo clips "
                        "given to a model trained on echo, tile for inputs at the scale of a model trained on "
                        "unresized frames, else resize (README: 'How predict prepares frames')")
    p.add_argument("--tile", action=argparse.BooleanOptionalAction, default=None,
                   help="the older spelling of --prepare tile (--tile) and --prepare resize (--no-tile)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap with --tile")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dicom-masks", default="nifti", choices=["nifti", "png"], help="mask format for DICOM inputs")
    p.add_argument("--postprocess", default="none",
                   help="clean each frame's mask: none, all, or a comma list of largest_component, fill_holes (MONAI)")
    p.add_argument("--no-echo", action="store_true", help="skip the LV measurements on videos and cines")
    p.add_argument("--lv-label", type=int, default=1, help="the LV class for the echo measurements")
    p.add_argument("--max-heart-rate", type=float, help="bpm; sets the shortest ED-to-ED distance (default 140)")
    p.add_argument("--filelist", help="EchoNet-Dynamic FileList.csv: report the EF mean absolute error")

    p = _sub(sub, "export", "ONNX or TorchScript, checked against PyTorch")
    p.add_argument("--model", required=True, help="a fine-tuned checkpoint")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="file format")
    p.add_argument("--out", help="output file (default: next to the checkpoint)")

    _sub(sub, "methods", "list the pretraining methods, one line each")
    _sub(sub, "modes", "list the fine-tuning modes (supervised, semi-supervised), one line each")
    _sub(sub, "archs", "list the architectures, one line each")
    return ap


def _config(args, stage: str):
    """The run's configuration: ``--config`` (or the defaults), the flags that were given, then ``--set``.

    ``--config`` alone can name everything: ``--data`` (and ``--method`` for pretraining) are needed only
    where neither the file nor ``--set`` gives ``data.spec`` (``pretrain.method``).
    """
    from .experiments.config import RunConfig, from_dict, load_yaml, resolve_run_config

    raw = load_yaml(args.config) if args.config else {}
    if isinstance(raw.get("data"), str):
        raw["data"] = {"spec": raw["data"]}  # data: SPEC, short for data: {spec: SPEC} (as in a sweep)
    base = from_dict(RunConfig, raw, args.config) if args.config else None
    needed = [("--data", args.data, "data.spec")]
    if stage == "pretrain":
        needed.append(("--method", args.method, "pretrain.method"))
    for flag, value, key in needed:
        if value is None and not args.print_config and not _names(raw, args.set, key):
            raise UserError(f"give {flag}, or {key} in --config (or --set {key}=...)")
    flags = {"data.spec": args.data, "model.arch": args.arch, "seed": args.seed, "devices": args.devices,
             "num_nodes": args.num_nodes, "precision": args.precision, "data.image_size": args.image_size,
             f"{stage}.batch_size": args.batch_size, f"{stage}.lr": args.lr, f"{stage}.epochs": args.epochs}
    if stage == "pretrain":
        flags["pretrain.method"] = args.method
    else:
        flags.update({"finetune.init": args.init, "finetune.labels": args.labels, "finetune.mode": args.mode})
    given = {key: value for key, value in flags.items() if value is not None}  # None: not given
    if args.steps is not None:  # --steps wins over --epochs and over epochs in --config
        given.update({f"{stage}.steps": args.steps, f"{stage}.epochs": None})
    return resolve_run_config(base, given, args.set, stage=stage)


def _names(raw: dict, sets: list[str], key: str) -> bool:
    """Whether a config file's mapping ``raw`` or a ``--set`` item gives the dotted ``key``."""
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return True
    return any(item.partition("=")[0].strip() == key for item in sets)


def _print_config(cfg, stage: str) -> int:
    """``--print-config``: the configuration the run would record in its ``config.yaml``, as YAML."""
    import yaml

    from .experiments.config import stage_dict, with_model_options

    if stage == "finetune" and cfg.finetune.init != "random":
        from .finetune.recipe import model_options
        from .finetune.transfer import read_init

        # from a checkpoint the network is the pretrained one: its options
        options = model_options(read_init(cfg.finetune.init), cfg.model.arch, cfg.model.options, cfg.finetune.init)
        cfg = with_model_options(cfg, options)
    else:
        cfg = with_model_options(cfg)
    print(yaml.safe_dump(stage_dict(cfg, stage), sort_keys=False), end="")
    return 0


def _need_out(args) -> None:
    if args.out is None:
        raise UserError(f"give --out, the {'sweep' if args.command == 'sweep' else 'run'} folder")


def cmd_data(args) -> int:
    from .data.registry import load_dataset
    from .data.splits import apply_splits, assign_splits
    from .experiments.config import RANGES, DataConfig, RunConfig, apply_set, validate_config
    from .experiments.inspect import export_dataset, summarise

    if args.list:
        from .data.registry import DATASETS

        _print_list(DATASETS.listing())
        return 0
    if not args.spec:
        raise UserError("give a data set spec, or --list to see them")
    # the keys of a run's config (data.options.X); the older short form (options.X) still read, with a note
    sets = []
    for item in args.set:
        if not item.startswith("data."):
            key = item.partition("=")[0]
            print(f"sslseg data: note: --set {key} is the older spelling of --set data.{key} (as pretrain, finetune "
                  "and sweep spell it)", file=sys.stderr)
            item = f"data.{item}"
        sets.append(item)
    # any positive size for a look at the data (training needs at least 16: experiments/config.py RANGES)
    sizes = {**RANGES, "DataConfig": {**RANGES["DataConfig"], "image_size": (1, 8192)}}
    run = apply_set(RunConfig(data=DataConfig(spec=args.spec, image_size=args.image_size)), sets)
    dcfg = validate_config(run.data, "data", sizes)
    cases = load_dataset(dcfg.spec, **dcfg.options)
    apply_splits(cases, assign_splits(cases, dcfg.val_fraction, dcfg.test_fraction, dcfg.split_seed))
    print(summarise(dcfg.spec, cases))
    if args.export:
        n = export_dataset(cases, args.export, dcfg.image_size)
        print(f"exported {n} labelled frames to {args.export}")
    return 0


def cmd_modes(args) -> int:
    from .finetune.modes import MODES

    _print_list(MODES.listing())
    from .finetune.modes import AUTO_MAX_CASES, AUTO_MODE

    print(f"\nauto (the default): the mode measured best on validation, {AUTO_MODE} with at most {AUTO_MAX_CASES} "
          "labelled case(s) where the training split has unlabelled frames, else supervised (README, "
          "'Semi-supervised fine-tuning')")
    return 0


def cmd_methods(args) -> int:
    from .pretrain.build import METHODS

    _print_list(METHODS.listing())
    print("\nnone (in a sweep): random initialisation, the reference every method is compared with")
    return 0


def cmd_archs(args) -> int:
    from .models.build import MODELS

    _print_list(MODELS.listing())
    return 0


def _print_list(items: dict[str, str]) -> None:
    width = max(len(n) for n in items)
    for name, text in items.items():
        print(f"{name:<{width}}  {text}")


def _train(args, stage: str):
    """What ``pretrain`` and ``finetune`` share: refuse a busy folder at once, resolve the config (printed
    with ``--print-config``), own the folder, train.

    Returns:
        ``(code, cfg, checkpoint)``: ``code`` is the exit code when nothing (more) is to be done (the config
        printed, the run already finished), else None and ``checkpoint`` the trained one.
    """
    from .experiments.runfolder import refuse_if_busy

    if not args.print_config:  # at once, before the training libraries load (seconds on a busy machine)
        refuse_if_busy(args.out)
    cfg = _config(args, stage)
    if args.print_config:
        return _print_config(cfg, stage), cfg, None
    _need_out(args)
    with _own(args, cfg) as finished:
        if finished:
            return 0, cfg, None
        # imported once the folder is ours: a second process is refused first
        from .experiments import pipeline

        run = pipeline.run_pretrain if stage == "pretrain" else pipeline.run_finetune
        return None, cfg, run(cfg, args.out, console=True)


def cmd_pretrain(args) -> int:
    code, _, ckpt = _train(args, "pretrain")
    if code is not None:
        return code
    from .engine import distributed

    if distributed.is_rank_zero():
        print(f"pretrained checkpoint: {ckpt}")
    return distributed.finish()


@contextlib.contextmanager
def _own(args, cfg):
    """The run folder's lock and config check, held by rank 0 (the other ranks start inside it).

    Yields True when the folder already holds this run, finished.
    """
    from .engine import distributed
    from .experiments.config import stage_dict
    from .experiments.runfolder import claim

    if not distributed.is_rank_zero():
        yield False
        return
    # a device request the machine cannot serve, or a model that cannot be built, is refused before the folder
    # is touched
    distributed.check_request(cfg.devices, cfg.precision, cfg.num_nodes, relaunch=False)
    from .models.build import check_model_options

    check_model_options(cfg.model.arch, cfg.model.options)
    init = cfg.finetune.init if args.command == "finetune" and cfg.finetune.init != "random" else None
    with claim(args.out, stage_dict(cfg, args.command), args.overwrite, inputs={"--init": init}) as folder:
        if folder.finished:
            print(f"already finished with this configuration: {Path(args.out) / 'checkpoint.pt'}")
        yield folder.finished


def cmd_finetune(args) -> int:
    code, cfg, ckpt = _train(args, "finetune")
    if code is not None:
        return code
    from .engine import distributed

    if not distributed.is_rank_zero():
        return distributed.finish()
    report = Path(args.out) / "transfer.json"
    if cfg.finetune.init != "random" and report.exists():
        meta = json.loads(report.read_text())
        print(f"weights: {meta['summary']}")
        if meta.get("freeze_encoder_steps"):
            n = int(meta["freeze_encoder_steps"])
            print(f"encoder frozen for the first {n} step{'s' if n != 1 else ''}")
    else:
        print("weights: random initialisation")
    from .engine.checkpoint import load_checkpoint

    saved = load_checkpoint(ckpt)
    prov = json.loads((Path(args.out) / "provenance.json").read_text()).get("resolved", {}).get("finetune", {}) \
        if (Path(args.out) / "provenance.json").exists() else {}
    if saved.get("mode") and saved["mode"] != "supervised":
        print(f"mode: {saved['mode']} (semi-supervised, {prov.get('unlabelled_frames', '?')} unlabelled training "
              "frames)")
    best = saved.get("best_val") or {}
    if "dice" in best:  # the selection, on screen: the weights saved are those of the best validation
        print(f"best validation Dice {best['dice']:.4f} at step {int(best['step'])} (the weights saved)")
    print(f"fine-tuned checkpoint: {ckpt}")
    return distributed.finish()


def cmd_evaluate(args) -> int:
    import numpy as np
    import torch

    from .data.registry import load_dataset
    from .engine.trained import open_trained
    from .experiments.config import DataConfig, from_dict
    from .experiments.pipeline import check_same_split, run_evaluate

    trained = open_trained(args.model, "cuda" if torch.cuda.is_available() else "cpu")
    dcfg = from_dict(DataConfig, trained.config.get("data", {}), f"{args.model} config.data")
    _check_same_kind(args.model, trained.dataset, args.data)
    options = dcfg.options if args.data.partition(":")[0] == dcfg.spec.partition(":")[0] else {}
    cases = load_dataset(args.data, **options)
    _check_classes(args.model, trained.num_classes, args.data, cases)
    splits = trained.checkpoint.get("splits") or {}
    if not splits:
        raise UserError(f"{args.model}: the checkpoint records no split; cannot tell test cases from training ones")
    unknown = [c.case_id for c in cases if c.case_id not in splits]
    _check_not_derived(args.model, unknown, splits)
    for c in cases:
        c.split = None
    check_same_split(cases, splits, args.model)
    for c in cases:
        if c.case_id in unknown:
            c.split = "test"  # in no split of the checkpoint's: never seen in training
    if unknown:
        print(f"{len(unknown)} of {len(cases)} case(s) are not in the checkpoint's recorded split "
              f"(e.g. {unknown[0]!r}): scored as never seen in training (split 'test')")
    from .evaluate.metrics import pooled_dice
    from .evaluate.postprocess import parse_steps

    rows = run_evaluate(trained, cases, args.split, args.out, args.convention, args.hd95_empty,
                        postprocess=parse_steps(args.postprocess))
    d = np.array([r["dice"] for r in rows], dtype=float)
    h = np.array([r["hd95"] for r in rows], dtype=float)
    hd = f"{np.nanmean(h):.2f} mm" if np.isfinite(h).any() else "undefined (empty predictions)"
    convs = "/".join(sorted({r["convention"] for r in rows}))
    print(f"{len(rows)} {args.split} cases, scored per {convs}: Dice {np.nanmean(d):.4f} (sd {np.nanstd(d):.4f}), "
          f"pooled Dice (EchoNet) {pooled_dice(rows):.4f}, HD95 {hd}; "
          f"HD95 penalised (empty prediction): {int(sum(r['hd95_penalised'] for r in rows))}, "
          f"undefined: {int(sum(r['hd95_undefined'] for r in rows))}; "
          f"per case: {Path(args.out) / 'per_case.csv'}")
    return 0


def _check_same_kind(model: str, trained_on: str, data: str) -> None:
    """Refuse data of another kind than the model's training data (``echonet:A`` and ``echonet:B`` are one kind)."""
    if not trained_on:
        return  # an older checkpoint that records no data set
    have, want = data.partition(":")[0], trained_on.partition(":")[0]
    if have != want:
        raise UserError(f"{model} was trained on {trained_on}, not on {have} data: its classes, splits and "
                        f"preprocessing are {want}'s; fine-tune a model on {have} to score {data}")


def _check_classes(model: str, num_classes: int, data: str, cases) -> None:
    """Refuse data whose label maps hold another number of classes than the model predicts."""
    top = 0
    for c in cases:
        for m in c.masks.values():
            top = max(top, int(m.max()))
    have = max(2, top + 1)  # as training counts them (experiments.pipeline.num_classes_of)
    if have != num_classes:
        raise UserError(f"{model} predicts {num_classes} classes (background + {num_classes - 1}), but the masks "
                        f"of {data} hold {have} (labels 0 to {have - 1}); score it with a model fine-tuned on "
                        "labels like these")


def _check_not_derived(model: str, unknown: list[str], splits: dict) -> None:
    """Refuse cases whose ids extend a training or validation case's id (frames exported from it: ``<case>_0003``)."""
    seen = {cid for cid, s in splits.items() if s in ("train", "val")}
    for cid in unknown:
        for k, ch in enumerate(cid):
            if ch in "_-." and cid[:k] in seen:
                raise UserError(f"case {cid!r} looks taken from {splits[cid[:k]]} case {cid[:k]!r} of {model} "
                                f"(its id with {cid[k:]!r} added); scoring it as never seen would count training "
                                "data as test data; give the cases their own ids")


def cmd_demo(args) -> int:
    from .experiments.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def cmd_sweep(args) -> int:
    from .experiments.runfolder import lock, refuse_if_busy

    if not args.print_config:  # at once, before the training libraries load (seconds on a busy machine)
        refuse_if_busy(args.out)
    from .experiments.sweep_config import load_sweep_config

    sweep = load_sweep_config(args.config, args.set)  # checked before anything is created
    if args.print_config:
        import yaml

        from .experiments.sweep_config import sweep_dict

        print(yaml.safe_dump(sweep_dict(sweep), sort_keys=False), end="")
        return 0
    _need_out(args)
    from .experiments.sweep import run_sweep

    with lock(args.out):  # one sweep per folder at a time
        results = run_sweep(sweep, args.out)
    out = Path(args.out)
    _print_summary(results)
    print(f"results: {results}\nreport:  {out / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    out = Path(args.dir)
    _check_results(out / "results.csv")
    path = write_report(out)
    _print_summary(out / "results.csv")
    print(f"report: {path}")
    return 0


def _check_results(path: Path) -> None:
    """``results.csv`` with the columns a sweep writes, or one line naming what is missing."""
    import csv

    from .experiments.sweep import OPTIONAL_KEYS, RESULT_KEYS

    if not path.is_file():
        return  # write_report says so
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    missing = [k for k in RESULT_KEYS if k not in header and k not in OPTIONAL_KEYS]
    if missing:
        raise UserError(f"{path}: not a sweep's results table (missing column(s) {', '.join(missing)})")


def _print_summary(results_csv) -> None:
    import csv

    from .report.tables import format_gains, format_text, subset_gains, summary_table

    rows = list(csv.DictReader(open(results_csv, newline="")))
    if len({r.get("dataset") for r in rows}) > 1:
        # several data sets: never averaged together; each is a row group of its own, as in the report
        rows = [{**r, "arch": f"{r['arch']} · {r['dataset']}"} for r in rows]
    if rows:
        print(format_text(summary_table(rows, "dice"), "dice"))
        gains = format_gains(subset_gains(rows, "dice"))
        if gains:
            print("\n" + gains)


def cmd_predict(args) -> int:
    from .echo.measurements import read_filelist_ef
    from .predict.run import Predictor, predict_inputs, write_summary

    _check_predict_options(args)
    for item in args.inputs:  # an output folder inside an input folder is passed over when searching it
        if Path(item).is_dir() and _within(Path(item), Path(args.out)):
            raise UserError(f"--out {args.out}: holds the input folder {item}, so a second run would read its "
                            "own masks; write the predictions elsewhere")
    known = read_filelist_ef(args.filelist) if args.filelist else None
    if args.tile is not None and args.prepare != "auto":
        raise UserError("--tile/--no-tile and --prepare given together; use --prepare alone")
    from .evaluate.postprocess import parse_steps

    options = {"batch_size": args.batch_size, "tta": args.tta, "overlap": args.overlap, "prepare": args.prepare,
               "tile": "auto" if args.tile is None else args.tile, "postprocess": parse_steps(args.postprocess)}
    if args.device:
        options["device"] = args.device
    predictor = Predictor.from_checkpoint(args.model, **options)
    results = []
    # one line per file; a failed file does not stop the others
    for r in predict_inputs(predictor, args.inputs, args.out, echo=not args.no_echo, lv_label=args.lv_label,
                            max_heart_rate_bpm=args.max_heart_rate, dicom_masks=args.dicom_masks):
        results.append(r)
        if r.ok:
            ef = ""
            if r.echo:
                v = r.echo["ef_percent"]
                ef = f", EF {v:.1f}% over {r.echo['beats']} beat(s)" if v == v else ", EF undefined (no LV change found)"
            print(f"ok      {r.path} ({r.kind}, {r.frames} frame(s), prepared: {r.preparation}{ef}) -> "
                  f"{r.outputs.get('mask') or r.outputs.get('mask_video')}")
            if r.echo and r.echo.get("flag"):  # sslseg.echo.measurements.flags
                print(f"        check the segmentation: {r.echo['flag']}")
        else:
            print(f"FAILED  {r.error}", file=sys.stderr)
    summary = write_summary(results, args.out, known)
    out = Path(args.out)
    print(f"{summary['files'] - summary['failed']} of {summary['files']} file(s) done: {out / 'predictions.csv'}")
    if summary["videos"]:
        print(f"echo measurements of {summary['videos']} video(s): {out / 'echo_summary.csv'}")
    if summary["ef_mae"] is not None:
        print(f"EF mean absolute error against {args.filelist}: {summary['ef_mae']:.2f} points "
              f"over {summary['ef_compared']} video(s)")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"sslseg predict: {len(failed)} file(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.error}", file=sys.stderr)
        return 2
    return 0


def _check_predict_options(args) -> None:
    """predict's numbers and device, refused before the model is read."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} is not allowed: expected an integer >= 1")
    if not 0 <= args.overlap < 1:
        raise UserError(f"--overlap {args.overlap} is not allowed: expected a number >= 0 and < 1")
    if args.max_heart_rate is not None and not 0 < args.max_heart_rate <= 600:
        raise UserError(f"--max-heart-rate {args.max_heart_rate} is not allowed: expected bpm > 0 and <= 600")
    if args.lv_label < 1:
        raise UserError(f"--lv-label {args.lv_label} is not allowed: expected a class index >= 1")
    if args.device:
        check_device(args.device)


def check_device(device: str) -> None:
    """A torch device string that exists here, or one line saying what does."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= have:
            raise UserError(f"--device {device}: this machine has {have} GPU(s) (cuda:0 to cuda:{have - 1})")
    elif dev.type not in ("cpu", "mps"):
        raise UserError(f"--device {device!r}: use cpu, cuda or cuda:N")


def cmd_export(args) -> int:
    from .export import export_model

    res = export_model(args.model, args.format, args.out)
    check = f"; max |exported - PyTorch| = {res.max_abs_diff:.2g}" if res.max_abs_diff is not None else ""
    print(f"{args.format}: {res.path} (input: normalised images (B, {res.metadata['in_channels']}, "
          f"{res.metadata['image_size']}, {res.metadata['image_size']}){check})")
    return 0


def _one_line(err: BaseException) -> str:
    """An error message on one line (library texts sometimes span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _check_outputs(args) -> None:
    """Output paths that cannot be what the command writes (and a seed no generator takes), refused before any
    work."""
    if getattr(args, "seed", None) is not None:
        from .engine.seed import check_seed

        check_seed(args.seed, "--seed")
    for flag in ("--out", "--export"):
        value = getattr(args, flag[2:], None)
        if value is not None and not value.strip():
            raise UserError(f"{flag} is empty; give a {'file' if args.command == 'export' else 'folder'}")
    folders = [("--out", getattr(args, "out", None))] if args.command != "export" else []
    folders.append(("--export", getattr(args, "export", None)))
    for flag, value in folders:
        if value and Path(value).exists() and not Path(value).is_dir():
            raise UserError(f"{flag} {value}: is a file, not a folder")
    if args.command == "export" and args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a folder; give the file to write")
    if args.command == "data" and args.export and args.spec and ":" in args.spec:
        source = Path(args.spec.partition(":")[2]).expanduser()
        if source.is_dir() and _within(Path(args.export), source):
            raise UserError(f"--export {args.export}: lies inside the data set's folder {source}, which would then "
                            "hold every case twice; export to a folder outside it")


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` (which may not exist yet) is ``folder`` or lies under it, links resolved."""
    path, folder = path.expanduser().resolve(), folder.resolve()
    return path == folder or folder in path.parents


COMMANDS = {"sweep": cmd_sweep, "report": cmd_report, "demo": cmd_demo, "data": cmd_data, "pretrain": cmd_pretrain, "finetune": cmd_finetune,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export, "methods": cmd_methods,
            "modes": cmd_modes,
            "archs": cmd_archs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # run details go to each run's log.txt; the terminal shows warnings, progress bars and results
    for h in logging.getLogger().handlers:
        h.setLevel(logging.WARNING)
    try:
        _check_outputs(args)
        return COMMANDS[args.command](args)
    except (UserError, FileNotFoundError) as err:
        # bad input the user can fix: one line, exit 2; any other exception keeps its traceback
        if args.debug:
            raise
        from .experiments.runfolder import launched_rank_zero

        # every rank meets the same bad input; one line is enough (torch is not imported for a refusal
        # that came before it)
        dist = sys.modules.get("sslseg.engine.distributed")
        if dist.is_rank_zero() if dist is not None else launched_rank_zero():
            print(f"sslseg {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only folder, a full disk, a path that is a file: the user's to fix
        if args.debug:
            raise
        from .io.files import DISK_FULL

        where = f"{err.filename}: " if err.filename else ""
        why = (err.strerror or str(err)).lower()
        if err.errno in DISK_FULL and "disk full" not in why:
            # a write that names no file (a flush at close): the output folder it was writing under
            where = where or (f"{args.out}: " if getattr(args, "out", None) else "")
            why = f"disk full ({why})"
        print(f"sslseg {args.command}: error: {where}{why}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sslseg {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
