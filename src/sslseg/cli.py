"""Command line: each subcommand parses, builds, calls the library.

Errors in what the user typed or gave end with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common")
    g.add_argument("--steps", type=int, help="optimiser steps (overrides epochs)")
    g.add_argument("--epochs", type=int, help="epochs over the training images")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--image-size", type=int, help="square side the images are resized to")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--devices", type=int, default=1)
    g.add_argument("--precision", default="32-true", choices=["32", "32-true", "bf16-mixed", "16-mixed"])
    g.add_argument("--config", help="YAML file with any config fields (applied before --set)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set model.options.base_channels=32")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sslseg", description="Self-supervised pretraining and label-efficient segmentation.")
    ap.add_argument("--version", action="version", version=f"sslseg {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline on built-in synthetic echo")
    p.add_argument("--out", default="sslseg-demo")
    p.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("data", help="summarise a data set; --export writes what the model sees")
    p.add_argument("spec")
    p.add_argument("--export", metavar="DIR")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("pretrain", help="self-supervised pretraining")
    p.add_argument("--data", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--arch", default="unet")
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("finetune", help="supervised fine-tuning on a label budget")
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="unet")
    p.add_argument("--init", default="random",
                   help="an sslseg checkpoint, a DeepLabV3 state_dict in torchvision's naming, or 'random'")
    p.add_argument("--labels", default="4", help="labelled cases: a count (4) or a percentage (5%%)")
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("sweep", help="label-efficiency study from a YAML config (resumable)")
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("report", help="rebuild report.html and figures of a sweep folder")
    p.add_argument("dir")

    p = sub.add_parser("evaluate", help="Dice and HD95 per test case")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", required=True)

    p = sub.add_parser("predict", help="masks for new images, volumes, DICOM and videos (+ echo measurements)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (PNG/TIFF, NIfTI, MetaImage/NRRD, DICOM, AVI)")
    p.add_argument("--model", required=True, help="a fine-tuned checkpoint")
    p.add_argument("--out", required=True)
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
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dicom-masks", default="nifti", choices=["nifti", "png"])
    p.add_argument("--no-echo", action="store_true", help="skip the LV measurements on videos and cines")
    p.add_argument("--lv-label", type=int, default=1, help="the LV class for the echo measurements")
    p.add_argument("--max-heart-rate", type=float, help="bpm; sets the shortest ED-to-ED distance (default 140)")
    p.add_argument("--filelist", help="EchoNet-Dynamic FileList.csv: report the EF mean absolute error")

    p = sub.add_parser("export", help="ONNX or TorchScript, checked against PyTorch")
    p.add_argument("--model", required=True, help="a fine-tuned checkpoint")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--out", help="output file (default: next to the checkpoint)")
    return ap


def _config(args, stage: str):
    from .experiments.config import RunConfig, apply_set, from_dict, load_yaml

    cfg = from_dict(RunConfig, load_yaml(args.config), args.config) if getattr(args, "config", None) else RunConfig()
    cfg.data.spec = args.data
    cfg.model.arch = args.arch
    cfg.seed = args.seed
    cfg.devices = args.devices
    cfg.precision = args.precision
    st = getattr(cfg, stage)
    if stage == "pretrain":
        st.method = args.method
    else:
        st.init = args.init
        st.labels = str(args.labels)
    if args.image_size:
        cfg.data.image_size = args.image_size
    if args.steps is not None:
        st.steps, st.epochs = args.steps, None
    elif args.epochs is not None:
        st.epochs = args.epochs
    if args.batch_size:
        st.batch_size = args.batch_size
    if args.lr:
        st.lr = args.lr
    apply_set(cfg, args.set)
    _validate_names(cfg, stage)
    return cfg


def _validate_names(cfg, stage: str) -> None:
    from .data.registry import DATASETS, valid_specs
    from .models.build import MODELS
    from .pretrain.build import METHODS

    if cfg.data.spec.partition(":")[0] not in DATASETS:
        raise ValueError(f"unknown data set {cfg.data.spec!r}; choose one of {valid_specs()}")
    if cfg.model.arch not in MODELS:
        raise ValueError(f"unknown architecture {cfg.model.arch!r}; choose one of {', '.join(sorted(MODELS))}")
    if stage == "pretrain" and cfg.pretrain.method not in METHODS:
        raise ValueError(f"unknown pretraining method {cfg.pretrain.method!r}; choose one of {', '.join(sorted(METHODS))}")
    if stage == "finetune":
        from .data.splits import parse_budget

        parse_budget(cfg.finetune.labels)
        if cfg.finetune.init != "random" and not Path(cfg.finetune.init).is_file():
            raise ValueError(f"checkpoint not found: {cfg.finetune.init} (give a checkpoint file or 'random')")


def cmd_data(args) -> int:
    from .data.registry import load_dataset
    from .data.splits import apply_splits, assign_splits
    from .experiments.config import DataConfig, apply_set
    from .experiments.inspect import export_dataset, summarise

    # accept the same keys as the training commands (data.options.X) and the short form (options.X)
    sets = [item[len("data."):] if item.startswith("data.") else item for item in args.set]
    dcfg = apply_set(DataConfig(spec=args.spec, image_size=args.image_size), sets)
    cases = load_dataset(dcfg.spec, **dcfg.options)
    apply_splits(cases, assign_splits(cases, dcfg.val_fraction, dcfg.test_fraction, dcfg.split_seed))
    print(summarise(dcfg.spec, cases))
    if args.export:
        n = export_dataset(cases, args.export, dcfg.image_size)
        print(f"exported {n} labelled frames to {args.export}")
    return 0


def cmd_pretrain(args) -> int:
    from .experiments.pipeline import run_pretrain

    cfg = _config(args, "pretrain")
    ckpt = run_pretrain(cfg, args.out)
    print(f"pretrained checkpoint: {ckpt}")
    return 0


def cmd_finetune(args) -> int:
    from .experiments.pipeline import run_finetune

    cfg = _config(args, "finetune")
    ckpt = run_finetune(cfg, args.out)
    report = Path(args.out) / "transfer.json"
    if cfg.finetune.init != "random" and report.exists():
        meta = json.loads(report.read_text())
        print(f"weights: {meta['summary']}")
        if meta.get("freeze_encoder_steps"):
            print(f"encoder frozen for the first {meta['freeze_encoder_steps']} steps")
    else:
        print("weights: random initialisation")
    print(f"fine-tuned checkpoint: {ckpt}")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .data.registry import load_dataset
    from .engine.checkpoint import load_checkpoint
    from .experiments.config import DataConfig, from_dict
    from .experiments.pipeline import check_same_split, run_evaluate

    ckpt = load_checkpoint(args.model)
    dcfg = from_dict(DataConfig, ckpt.get("config", {}).get("data", {}), f"{args.model} config.data")
    options = dcfg.options if args.data.partition(":")[0] == dcfg.spec.partition(":")[0] else {}
    cases = load_dataset(args.data, **options)
    splits = ckpt.get("splits") or {}
    if not splits:
        raise ValueError(f"{args.model}: the checkpoint records no split; cannot tell test cases from training ones")
    unknown = [c.case_id for c in cases if c.case_id not in splits]
    for c in cases:
        c.split = None
    check_same_split(cases, splits, args.model)
    for c in cases:
        if c.case_id in unknown:
            c.split = "test"  # never seen in training: safe to evaluate on
    rows = run_evaluate(args.model, cases, args.split, args.out)
    d = np.array([r["dice"] for r in rows], dtype=float)
    h = np.array([r["hd95"] for r in rows], dtype=float)
    hd = f"{np.nanmean(h):.2f} mm" if np.isfinite(h).any() else "undefined (empty predictions)"
    print(f"{len(rows)} {args.split} cases: Dice {np.nanmean(d):.4f} (sd {np.nanstd(d):.4f}), "
          f"HD95 {hd}; undefined HD95: {int(sum(r['hd95_undefined'] for r in rows))} frame(s); "
          f"per case: {Path(args.out) / 'per_case.csv'}")
    return 0


def cmd_demo(args) -> int:
    from .experiments.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def cmd_sweep(args) -> int:
    from .experiments.sweep import run_sweep

    results = run_sweep(args.config, args.out, args.set)
    out = Path(args.out)
    _print_summary(results)
    print(f"results: {results}\nreport:  {out / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    out = Path(args.dir)
    path = write_report(out)
    _print_summary(out / "results.csv")
    print(f"report: {path}")
    return 0


def _print_summary(results_csv) -> None:
    import csv

    from .report.tables import format_text, summary_table

    rows = list(csv.DictReader(open(results_csv, newline="")))
    if rows:
        print(format_text(summary_table(rows, "dice"), "dice"))


def cmd_predict(args) -> int:
    from .echo.measurements import read_filelist_ef
    from .predict.run import Predictor, predict_inputs, write_summary

    known = read_filelist_ef(args.filelist) if args.filelist else None
    if args.tile is not None and args.prepare != "auto":
        raise ValueError("--tile/--no-tile and --prepare given together; use --prepare alone")
    options = {"batch_size": args.batch_size, "tta": args.tta, "overlap": args.overlap, "prepare": args.prepare,
               "tile": "auto" if args.tile is None else args.tile}
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


def cmd_export(args) -> int:
    from .export import export_model

    res = export_model(args.model, args.format, args.out)
    check = f"; max |exported - PyTorch| = {res.max_abs_diff:.2g}" if res.max_abs_diff is not None else ""
    print(f"{args.format}: {res.path} (input: normalised images (B, {res.metadata['in_channels']}, "
          f"{res.metadata['image_size']}, {res.metadata['image_size']}){check})")
    return 0


COMMANDS = {"sweep": cmd_sweep, "report": cmd_report, "demo": cmd_demo, "data": cmd_data, "pretrain": cmd_pretrain, "finetune": cmd_finetune,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # run details go to each run's log.txt; the terminal shows warnings, progress bars and results
    for h in logging.getLogger().handlers:
        h.setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sslseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sslseg {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
