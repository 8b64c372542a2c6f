"""The stages as functions of a resolved :class:`RunConfig`: pretrain, fine-tune, evaluate.

Each writes a run directory: ``config.yaml`` (fully resolved), ``checkpoint.pt``,
``metrics.csv``, ``log.txt`` (and ``last.pt`` while running, for resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from ..augment.views import SegAugment
from ..data.batches import (
    FramePool,
    LabelledSet,
    Normalizer,
    Prefetcher,
    ResidentFramePool,
    batch_source,
    shard,
    step_generator,
    unlabelled_pool,
)
from ..data.memory import check_batch_fits
from ..data.registry import load_dataset
from ..data.sample import Case, Cases
from ..data.splits import labelled_subset, read_json, resolve_budget, splits_for, write_json
from ..engine import distributed
from ..engine.checkpoint import save_checkpoint
from ..engine.loop import LoopConfig, fit
from ..engine.seed import seed_everything
from ..engine.trained import TrainedModel, open_trained
from ..errors import UserError
from ..evaluate.inference import as_scored, score_cases
from ..evaluate.metrics import dice_per_frame
from ..finetune import modes, recipe
from ..finetune.losses import segmentation_loss
from ..finetune.transfer import freeze_encoder, read_init
from ..io.tables import write_table
from ..models.build import build_model
from ..pretrain.build import build_method, frame_axis, resolve_options
from ..pretrain.ddp import prepare_for_ddp
from .config import (
    EvaluateConfig,
    RunConfig,
    dump_yaml,
    resolve_run_config,
    stage_dict,
    to_dict,
    with_model_options,
)
from .provenance import resolved_options, write_provenance

log = logging.getLogger("sslseg")


def load_cases(cfg: RunConfig, out_dir: str | Path | None = None, splits_path: str | Path | None = None) -> Cases:
    """Read the data set and apply the per-case split (drawn once, saved, reused).

    Files the reader skipped (unreadable, wrong shape, NaN) are named on the console, not only in
    ``sslseg data``: a run must not train on less than its user thinks without a word.
    """
    cases = load_dataset(cfg.data.spec, **cfg.data.options)
    skipped = cases.skipped
    if skipped and distributed.is_rank_zero():
        shown = "; ".join(str(s) for s in skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        log.warning("%s: %d file(s) skipped, not trained on: %s (sslseg data %s lists them all)",
                    cfg.data.spec, len(skipped), shown, cfg.data.spec)
    path = Path(splits_path) if splits_path else (Path(out_dir) / "splits.json" if out_dir else None)
    if path is not None:
        splits_for(cases, path, seed=cfg.data.split_seed,
                   val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction)
    else:
        from ..data.splits import apply_splits, assign_splits

        apply_splits(cases, assign_splits(cases, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed))
    return cases


def by_split(cases: list[Case], split: str) -> list[Case]:
    return [c for c in cases if c.split == split]


def num_classes_of(cases: list[Case]) -> int:
    top = 0
    for c in cases:
        for m in c.masks.values():
            top = max(top, int(m.max()))
    return max(2, top + 1)


def in_channels_of(cases: list[Case]) -> int:
    f = cases[0].frames
    return 1 if f.ndim == 3 else int(f.shape[1])


def start_processes(cfg: RunConfig, stage) -> object:
    """Check the device request and the batch split, then launch the other processes (Fabric).

    ``--batch-size`` is the *global* batch: with N processes each draws
    ``batch_size / N`` samples per step, so a run's hyperparameters mean the
    same on any number of devices.
    """
    distributed.check_request(cfg.devices, cfg.precision, int(cfg.num_nodes), relaunch=False)
    shard(stage.batch_size, 0, int(cfg.devices) * int(cfg.num_nodes))  # the batch must split evenly
    check_batch_fits(stage.batch_size, cfg.data.image_size,
                     "pretrain.batch_size" if stage is cfg.pretrain else "finetune.batch_size")
    return distributed.start(cfg.devices, cfg.precision, num_nodes=int(cfg.num_nodes))


# resume points: every tenth of the run and every two minutes (sslseg.engine.resume.SnapshotPolicy)
SNAPSHOT_SECONDS = 120.0


def _loop_cfg(cfg: RunConfig, stage, steps: int, **kw) -> LoopConfig:
    return LoopConfig(
        steps=steps, lr=stage.lr, weight_decay=stage.weight_decay, warmup_steps=stage.warmup_steps,
        devices=cfg.devices, precision=cfg.precision, log_every=max(1, min(50, steps // 20)), logger=cfg.logger,
        save_seconds=SNAPSHOT_SECONDS, **kw,
    )


def _steps(stage, n_items: int) -> int:
    """A stage's optimiser steps: its epochs over ``n_items`` when given, else its steps."""
    if stage.epochs:
        return int(stage.epochs) * recipe.steps_per_epoch(n_items, stage.batch_size)
    return int(stage.steps)


def run_pretrain(cfg: RunConfig, out_dir: str | Path, cases: list[Case] | None = None, console: bool = False) -> Path:
    """Self-supervised pretraining on every frame of the training cases (never val/test).

    ``console``: print the run's summary before training and its outcome after (the command line's
    runs; a sweep's runs keep to their log files).
    """
    fabric = start_processes(cfg, cfg.pretrain)
    rank0 = fabric.is_global_zero
    out = Path(out_dir)
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    with distributed.rank_zero_first():
        cases = cases if cases is not None else load_cases(cfg, out)
    train = by_split(cases, "train")
    if not train:
        raise UserError("the training split is empty; nothing to pretrain on")
    normalizer = Normalizer.fit(train, seed=cfg.seed)
    pool = _frames_where_they_fit(FramePool(train, cfg.data.image_size, normalizer), cfg, fabric)
    model_kwargs = {"in_channels": in_channels_of(train), "num_classes": num_classes_of(cases), **cfg.model.options}
    model = build_model(cfg.model.arch, **model_kwargs)
    options, why = resolve_options(cfg.pretrain.method, cfg.pretrain.options, frame_axis(train))
    if why:
        log.info("pretrain %s: %s", cfg.pretrain.method, why)
    # config.yaml and the checkpoint record what ran: the method's own options, data-dependent defaults filled in
    cfg = resolve_run_config(cfg, {"pretrain.options": options}, stage="pretrain")
    method = build_method(cfg.pretrain.method, model, **options)
    steps = _steps(cfg.pretrain, len(pool))
    find_unused = prepare_for_ddp(method)  # parts the method never trains stay out of DDP
    world, rank = fabric.world_size, fabric.global_rank
    n_parts = method.partitions  # the method is read only through its contract (sslseg.pretrain.contract)
    if n_parts:

        def make_batch(step: int):
            # the global batch's draw, a pure function of (seed, step); this rank loads its slice
            draw = pool.meta_indices(cfg.pretrain.batch_size, step_generator(cfg.seed, step), n_parts)
            part = shard(len(draw["flat"]), rank, world)
            return pool.load_with_meta({k: v[part] for k, v in draw.items()})
    else:
        part = shard(cfg.pretrain.batch_size, rank, world)

        def make_batch(step: int):
            return pool.load(pool.indices(cfg.pretrain.batch_size, step_generator(cfg.seed, step))[part])
    if rank0:
        dump_yaml(stage_dict(with_model_options(cfg, model_kwargs), "pretrain"), out / "config.yaml")
        write_provenance(out, {"pretrain": {"steps": steps, "options": resolved_options(method, options)}})
    log.info("pretraining %s/%s on %d frames of %d training cases", cfg.pretrain.method, cfg.model.arch, len(pool), len(train))
    show = console and rank0
    _say(show, [
        *_data_lines(cfg, cases, out),
        f"method:  {cfg.pretrain.method}, on {_n(len(pool), 'frame')} of the {_n(len(train), 'training case')}"
        f" ({_count(method) - _count(model):,} parameters of its own beside the model's)",
        _model_line(cfg.model.arch, model, model_kwargs),
        _device_line(fabric, cfg),
        _training_line(cfg.pretrain, steps),
    ])
    with _batches(make_batch, steps, fabric, isinstance(pool, ResidentFramePool)) as next_batch, \
            _echo_resume(show):
        result = fit(
            method,
            next_batch,
            _loop_cfg(cfg, cfg.pretrain, steps, save_every=max(1, steps // 10),
                      restarts=tuple(method.schedule_restarts(steps)),
                      sync_batchnorm=bool(cfg.pretrain.sync_batchnorm),
                      find_unused_parameters=find_unused),
            # a method may ask for its own learning rates per part (BYOL's predictor_lr_ratio)
            params=method.param_groups(cfg.pretrain.lr),
            out_dir=out,
            desc=f"pretrain {cfg.pretrain.method}",
            after_step=method.after_step,
            fabric=fabric,
        )
    _say(show, [_outcome_line(f"pretrain {cfg.pretrain.method}", result)])
    ckpt = out / "checkpoint.pt"
    if not rank0:
        return ckpt
    save_checkpoint(
        ckpt, model, cfg.model.arch, model_kwargs, to_dict(cfg), stage="pretrain",
        splits={c.case_id: c.split for c in cases}, dataset=cfg.data.spec,
        method=cfg.pretrain.method, trained_parts=list(method.trains),
        preprocess={"normalizer": normalizer.to_dict(), "image_size": cfg.data.image_size},
    )
    return ckpt


def check_same_split(cases: list[Case], splits: dict[str, str], source: str) -> None:
    """Apply a checkpoint's split; refuse when a case would change sides."""
    moved = [c.case_id for c in cases if c.case_id in splits and c.split is not None and c.split != splits[c.case_id]]
    if moved:
        raise UserError(
            f"{source} was pretrained with a different train/val/test split ({len(moved)} case(s) differ, "
            f"e.g. {moved[0]!r}); reuse the pretraining run's splits.json so no test case leaks"
        )
    for c in cases:
        if c.case_id in splits:
            c.split = splits[c.case_id]


def select_labelled(cases: list[Case], labels: str, seed: int, path: Path | None) -> list[str]:
    """The labelled training cases for a budget; read from ``path`` when saved, else drawn and saved."""
    if path is not None and path.is_file():
        saved = read_json(path)
        if str(saved.get("budget")) != str(labels) or saved.get("seed") != seed:
            # never reuse a subset drawn for another budget or seed
            raise UserError(f"{path} holds the subset for --labels {saved.get('budget')} seed {saved.get('seed')}, "
                            f"not --labels {labels} seed {seed}; use --overwrite or another --out")
        return list(saved["case_ids"])
    train_ids = [c.case_id for c in by_split(cases, "train") if c.masks]
    k = resolve_budget(labels, len(train_ids))
    ids = labelled_subset(train_ids, k, seed)
    if path is not None:
        write_json(path, {"budget": str(labels), "seed": seed, "num_cases": k, "case_ids": ids})
    return ids


def run_finetune(
    cfg: RunConfig, out_dir: str | Path, cases: list[Case] | None = None, labelled_ids: list[str] | None = None,
    console: bool = False,
) -> Path:
    """Fine-tune from ``cfg.finetune.init`` (a checkpoint or ``random``) on a label budget.

    ``console``: print the run's summary before training and its outcome after (the command line's
    runs; a sweep's runs keep to their log files).
    """
    fabric = start_processes(cfg, cfg.finetune)
    out = _run_folder(out_dir, fabric.is_global_zero)
    seed_everything(cfg.seed)
    ft = cfg.finetune
    # an sslseg checkpoint, or a plain DeepLabV3 state_dict in torchvision's naming (read first: a bad
    # file is refused before anything is written)
    init = read_init(ft.init) if ft.init != "random" else None
    cases = _finetune_cases(cfg, out, cases, init)
    labelled = _labelled_ids(cfg, cases, labelled_ids, out, fabric.is_global_zero)
    train = by_split(cases, "train")
    chosen = [c for c in train if c.case_id in labelled]
    if not any(np.any(np.asarray(m) > 0) for c in chosen for m in c.masks.values()):
        raise UserError(f"{cfg.data.spec}: every mask of the {len(chosen)} labelled training case(s) is background "
                        "(0): nothing to learn; check that the masks hold class indices (1 = foreground)")
    # validation selects on what the test scores: whole volumes, whatever the empty-slice policy
    val = [as_scored(c) for c in by_split(cases, "val") if c.masks]
    normalizer = _finetune_normalizer(init, train, cfg.seed)

    model_kwargs = {"in_channels": in_channels_of(cases), "num_classes": num_classes_of(cases),
                    **recipe.model_options(init, cfg.model.arch, cfg.model.options, ft.init)}
    model = build_model(cfg.model.arch, **model_kwargs)
    report = recipe.load_pretrained(model, init, ft.transfer_parts, ft.init)
    if ft.recalibrate_bn and recipe.encoder_loaded(report):
        recipe.recalibrate_encoder(model, train, cfg.data.image_size, normalizer, cfg.seed)

    data = LabelledSet(chosen, cfg.data.image_size, normalizer)
    val_set = LabelledSet(val, cfg.data.image_size, normalizer) if val else None
    steps = _steps(ft, len(data))
    # the unlabelled frames of the training split only: unselected cases and the unlabelled frames of the
    # selected ones; validation and test frames are never drawn
    pool = (_frames_where_they_fit(unlabelled_pool(train, labelled, cfg.data.image_size, normalizer), cfg, fabric)
            if ft.mode != "supervised" else None)
    asked = ft.mode
    mode = modes.resolve_mode(ft.mode, len(pool) if pool is not None else 0, len(chosen))
    if not modes.needs_unlabelled(mode):
        pool = None
    # config.yaml and the checkpoint record the mode that ran (auto resolved)
    cfg = with_model_options(dataclasses.replace(cfg, finetune=dataclasses.replace(ft, mode=mode)), model_kwargs)
    ft = cfg.finetune
    task = modes.build_task(mode, model, segmentation_loss(ft.loss),
                            SegAugment(strength=ft.augment) if ft.augment > 0 else None, steps, ft.mode_options)
    frozen = recipe.freeze_steps(steps, recipe.encoder_loaded(report), ft.freeze_encoder_fraction,
                                 ft.freeze_encoder_steps, ft.freeze_encoder_epochs,
                                 recipe.steps_per_epoch(len(data), ft.batch_size), len(chosen))
    params = recipe.param_groups(model, task, ft.lr, ft.encoder_lr_ratio, init is not None, frozen)
    if frozen > 0:
        log.info("encoder frozen for the first %d of %d steps", frozen, steps)
    if fabric.is_global_zero:
        _record_finetune(out, cfg, report, frozen, steps, sorted(labelled), len(data), task,
                         len(pool) if pool is not None else 0)
    log.info("fine-tuning %s from %s on %d labelled frames of %d cases", cfg.model.arch, ft.init, len(data), len(chosen))
    if pool is not None:
        log.info("%s: %d unlabelled frames of %d training cases", mode, len(pool), len(train))
    name = Path(str(ft.init)).parent.name if init else "random"
    desc = f"finetune {name}" + (f" {mode}" if mode != "supervised" else "")
    show = console and fabric.is_global_zero
    n_train = len(train)
    _say(show, [
        *_data_lines(cfg, cases, out),
        f"labels:  {len(chosen)} of the {_n(n_train, 'training case')} ({_n(len(data), 'labelled frame')})",
        f"mode:    {mode}" + (" (chosen by auto)" if asked == "auto" else "")
        + (f", beside {len(pool)} unlabelled frames of the training split" if pool is not None else ""),
        _model_line(cfg.model.arch, model, model_kwargs)
        + (f"; from {ft.init}" if init is not None else "; random initialisation"),
        _device_line(fabric, cfg),
        _training_line(ft, steps) + (f"; encoder frozen for the first {frozen} step{'s' if frozen != 1 else ''}"
                                     if frozen > 0 else "")
        + (f"; validation every {_n(ft.val_every, 'step')} on {_n(len(val), 'case')}" if val_set is not None
           and 0 < ft.val_every < steps else f"; validation at the end on {_n(len(val), 'case')}"
           if val_set is not None else "; no validation case"),
    ])
    with _echo_resume(show):
        result = _fit_finetune(cfg, fabric, task, data, val_set, model_kwargs["num_classes"], steps, frozen, params,
                               out, desc=desc, pool=pool)
    _say(show, [_outcome_line(desc, result)])
    ckpt = out / "checkpoint.pt"
    if fabric.is_global_zero:
        save_checkpoint(
            ckpt, model, cfg.model.arch, model_kwargs, to_dict(cfg), stage="finetune",
            preprocess=_finetune_preprocess(cfg, chosen, normalizer),
            splits={c.case_id: c.split for c in cases}, dataset=cfg.data.spec,
            labelled_cases=sorted(labelled), best_val=result.best or {}, mode=mode,
            transfer=report.summary() if report else "random initialisation", freeze_encoder_steps=frozen,
        )
    return ckpt


def _say(show: bool, lines: list[str]) -> None:
    """Print ``lines`` when ``show`` (they go to standard output, so they stay in a piped log)."""
    if show:
        print("\n".join(lines), flush=True)


def _n(k: int, word: str) -> str:
    """``1 case``, ``3 cases``."""
    return f"{k} {word}{'s' if k != 1 else ''}"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _data_lines(cfg: RunConfig, cases: list[Case], out: Path) -> list[str]:
    """What the run reads: the data set's cases and frames, and the per-case split (the nnU-Net habit)."""
    frames = sum(c.num_frames for c in cases)
    labelled = sum(len(c.labelled_indices) for c in cases)
    n = {s: sum(c.split == s for c in cases) for s in ("train", "val", "test")}
    return [f"data:    {cfg.data.spec}, {len(cases)} cases, {frames} frames ({labelled} labelled), "
            f"resized to {cfg.data.image_size} x {cfg.data.image_size}",
            f"split:   {n['train']} training, {n['val']} validation, {n['test']} test cases "
            f"({out / 'splits.json'})"]


def _model_line(arch: str, model: torch.nn.Module, kwargs: dict) -> str:
    c = int(kwargs["in_channels"])
    return (f"model:   {arch}, {_count(model):,} parameters, {c} input channel{'s' if c != 1 else ''}, "
            f"{int(kwargs['num_classes'])} classes (background included)")


def _device_line(fabric, cfg: RunConfig) -> str:
    dev = fabric.device
    name = f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
    n = fabric.world_size
    return f"device:  {name}, {n} process{'es' if n != 1 else ''}, precision {cfg.precision}"


def _training_line(stage, steps: int) -> str:
    warm = int(stage.warmup_steps)
    return (f"train:   {steps} steps, batch {stage.batch_size}, lr {stage.lr:g}"
            + (f" (warm-up {warm} step{'s' if warm != 1 else ''})" if warm > 0 else ""))


def _outcome_line(desc: str, result) -> str:
    """The run's last line of its own: steps, time and the loss of the last logged steps."""
    from ..engine.progress import format_duration

    losses = [h for h in result.history if "loss" in h]
    last = ""
    if losses:  # a logged row holds the mean loss since the row before
        span = int(losses[-1]["step"]) - (int(losses[-2]["step"]) if len(losses) > 1 else 0)
        last = f", loss {losses[-1]['loss']:.4f} " + ("at the last step" if span == 1 else f"over the last {span} steps")
    return f"{desc}: {result.steps} steps done in {format_duration(result.seconds)}{last}"


class _ResumeEcho(logging.Handler):
    """Shows the loop's "resumed from <last.pt> at step N" on the console too (log.txt has every line)."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "resumed from" in msg:
            print(msg, flush=True)


def _frames_where_they_fit(pool: FramePool, cfg: RunConfig, fabric):
    """``pool``, or its frames moved onto the training device where ``data.resident`` and a measured
    memory check say so (:func:`sslseg.data.batches.batch_source`); the batches are the same either way."""
    asked = {"always": "on", "never": "off"}.get(cfg.data.resident, cfg.data.resident)
    source, why = batch_source(pool, fabric.device, asked)
    log.info("%s", why)
    return source


class _OnDevice:
    """``next_batch`` for frames resident on the device: each batch cut when asked, on the training thread
    (the work is queued on the device; no prefetching thread)."""

    def __init__(self, make) -> None:
        self.make = make

    def __call__(self, step: int):
        return self.make(step)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _batches(make_batch, steps: int, fabric, resident: bool = False):
    """The step batches: cut on the device when the frames live there, else by a prefetching thread."""
    if resident:
        return _OnDevice(make_batch)
    return Prefetcher(make_batch, steps, pin_memory=fabric.device.type == "cuda")


@contextlib.contextmanager
def _echo_resume(show: bool):
    handler = _ResumeEcho(logging.INFO) if show else None
    if handler is not None:
        log.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            log.removeHandler(handler)


def _run_folder(out_dir: str | Path, rank0: bool) -> Path:
    """The run folder, created by rank 0."""
    out = Path(out_dir)
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    return out


def _finetune_cases(cfg: RunConfig, out: Path, cases: list[Case] | None, init: dict | None) -> list[Case]:
    """The cases with their split: the pretraining run's, so that no test case was ever seen in pretraining."""
    with distributed.rank_zero_first():
        cases = cases if cases is not None else load_cases(cfg, out)
    if init is not None and init.get("splits"):
        check_same_split(cases, init["splits"], cfg.finetune.init)
    return cases


def _labelled_ids(cfg: RunConfig, cases: list[Case], given: list[str] | None, out: Path, rank0: bool) -> set[str]:
    """The labelled training cases: ``given`` (a sweep's nested subsets), or drawn for the budget; both saved."""
    ft = cfg.finetune
    if given is None:
        with distributed.rank_zero_first():
            return set(select_labelled(cases, ft.labels, cfg.seed, out / "labelled.json"))
    if rank0:
        write_json(out / "labelled.json", {"budget": str(ft.labels), "seed": cfg.seed,
                                           "num_cases": len(given), "case_ids": sorted(given)})
    return set(given)


def _finetune_normalizer(init: dict | None, train: list[Case], seed: int) -> Normalizer:
    """The pretraining run's input statistics (the pretrained encoder saw inputs normalised with them), else fitted."""
    if init is not None and "preprocess" in init:
        return Normalizer.from_dict(init["preprocess"]["normalizer"])
    return Normalizer.fit(train, seed=seed)


def _record_finetune(out: Path, cfg: RunConfig, report, frozen: int, steps: int, labelled: list[str],
                     frames: int, task, unlabelled_frames: int = 0) -> None:
    """``transfer.json`` (every key by part, for a user checking what their weights moved), ``config.yaml``, provenance."""
    if report is not None:
        write_json(out / "transfer.json", {"init": str(cfg.finetune.init), "summary": report.summary(),
                                           "freeze_encoder_steps": frozen, "loaded": report.loaded,
                                           "missing": report.missing, "unexpected": report.unexpected,
                                           "adapted": list(report.adapted)})
    dump_yaml(stage_dict(cfg, "finetune"), out / "config.yaml")
    write_provenance(out, {"finetune": {"steps": steps, "freeze_encoder_steps": frozen,
                                        "labelled_cases": labelled, "labelled_frames": frames,
                                        "mode": cfg.finetune.mode, "unlabelled_frames": unlabelled_frames,
                                        "augment": task.augment,
                                        "weights": report.summary() if report else "random initialisation"}})


def _fit_finetune(cfg: RunConfig, fabric, task, data: LabelledSet, val_set: LabelledSet | None,
                  num_classes: int, steps: int, frozen: int, params, out: Path, desc: str,
                  pool: FramePool | None = None):
    """The training loop over this rank's share of each step's labelled batch (and, for a semi-supervised
    mode, of its unlabelled batch from ``pool``); the encoder thawed after ``frozen`` steps."""
    ft = cfg.finetune
    model = task.model
    part = shard(ft.batch_size, fabric.global_rank, fabric.world_size)
    n_unlabelled = int(task.unlabelled_batch or ft.batch_size)  # the mode's contract (sslseg.finetune.contract)
    part_u = shard(n_unlabelled, fabric.global_rank, fabric.world_size) if pool is not None else None

    def make_batch(step: int):
        # the global batch's draw, a pure function of (seed, step); this rank takes its slice
        images, masks = data.take(data.indices(ft.batch_size, step_generator(cfg.seed, step))[part])
        if pool is None:
            return images, masks
        # the unlabelled draw: its own stream of the same (seed, step)
        unlabelled = pool.load(pool.indices(n_unlabelled, step_generator(cfg.seed, step, stream=1))[part_u])
        return {"images": images, "masks": masks, "unlabelled": unlabelled, "step": step}

    # the labelled frames are few and stay on the host; resident unlabelled frames are cut on the device
    prefetch = _batches(make_batch, steps, fabric, isinstance(pool, ResidentFramePool))

    def next_batch(step: int):
        if frozen > 0:
            # set from the step index before each step, so a resumed run freezes exactly as a fresh one
            freeze_encoder(model, step < frozen)
        return prefetch(step)

    def validate(_task) -> dict[str, float]:
        return {"dice": _mean_dice(model, val_set, num_classes)}

    with prefetch:
        result = fit(
            task,
            next_batch,
            # a frozen encoder gets no gradient for the first steps: DDP must look for unused parameters
            _loop_cfg(cfg, ft, steps, val_every=ft.val_every if val_set is not None else 0,
                      save_every=max(1, steps // 10), find_unused_parameters=frozen > 0),
            params=params,
            out_dir=out,
            desc=desc,
            validate=validate if val_set is not None else None,
            monitor="dice" if val_set is not None else None,
            after_step=task.after_step,
            fabric=fabric,
        )
    if frozen > 0:
        freeze_encoder(model, False)
    return result


def _finetune_preprocess(cfg: RunConfig, chosen: list[Case], normalizer: Normalizer) -> dict:
    """How prediction must prepare new inputs: the normalisation, sizes, kind of frames and spacing of training."""
    # the labelled frames' size before resizing, when they share one: prediction tiles larger inputs
    # at this scale only when training did not resize (sslseg.predict.run)
    sizes = {tuple(int(v) for v in c.frames.shape[-2:]) for c in chosen}
    native = sizes.pop() if len(sizes) == 1 else None
    from ..engine.trained import training_frames

    # what the frames were (echo sectors, native-scale slices, resized pictures): prediction prepares
    # new inputs the same way (sslseg.predict.run.choose_preparation)
    frames_kind = training_frames(cfg.data.spec, native, cfg.data.image_size,
                                  {c.modality for c in chosen}, cfg.data.options)
    known = [c.spacing for c in chosen if c.spacing is not None and c.spacing_known]
    options = cfg.data.options or {}
    # how the readers cut volumes and scaled intensities: prediction reads new volumes the same way
    return {"normalizer": normalizer.to_dict(), "image_size": cfg.data.image_size,
            "native_size": list(native) if native else None, "frames": frames_kind,
            "spacing": [float(v) for v in np.median(np.array(known, float), 0)] if known else None,
            "axis": int(options.get("axis", 2)), "intensity": str(options.get("intensity", "scale"))}


@torch.inference_mode()
def _mean_dice(model, data: LabelledSet, num_classes: int, batch: int = 32) -> float:
    """Mean foreground Dice on a resized labelled set (for checkpoint selection only).

    Scored as the test scores: a class predicted on a frame whose truth has none of it is a false
    positive and counts 0; a frame with the class on neither side has nothing to find and is left out.
    """
    model.eval()
    dices = []
    dev = next(model.parameters()).device
    classes = list(range(1, num_classes))
    for s in range(0, len(data), batch):
        pred = model(data.images[s : s + batch].to(dev)).argmax(1).cpu()
        d = dice_per_frame(pred, data.masks[s : s + batch], classes)
        predicted = torch.stack([(pred == c).flatten(1).any(1) for c in classes], 1).numpy()
        d[np.isnan(d) & predicted] = 0.0  # empty truth, something predicted
        dices.append(d.ravel())
    d = np.concatenate(dices) if dices else np.array([])
    d = d[~np.isnan(d)]  # frames without the class on either side: nothing to find
    return float(d.astype(np.float64).mean()) if d.size else float("nan")


def run_evaluate(ckpt_path: str | Path | TrainedModel, cases: list[Case], split: str, out_dir: str | Path,
                 convention: str = EvaluateConfig.convention, hd95_empty: str = EvaluateConfig.hd95_empty,
                 postprocess: dict | None = None) -> list[dict]:
    """Evaluate a fine-tuned checkpoint (a path, or one opened by :func:`open_trained`) on the labelled
    cases of ``split``; write CSVs.

    ``per_frame.csv``: one row per labelled frame and foreground class;
    ``per_case.csv``: one row per case, scored by ``convention`` (see
    :func:`sslseg.evaluate.inference.score_cases`). ``postprocess``: steps applied
    to the predictions before scoring (:func:`sslseg.evaluate.postprocess.postprocess`
    keywords); None = raw predictions.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(ckpt_path, TrainedModel):
        trained = ckpt_path
    else:
        trained = open_trained(ckpt_path, "cuda" if torch.cuda.is_available() else "cpu")
    device = next(trained.model.parameters()).device
    test = [c for c in cases if c.split == split and c.masks]
    if not test:
        raise UserError(f"the {split!r} split has no labelled case to evaluate")
    rows, cases_rows = score_cases(trained.model, test, trained.normalizer, trained.image_size, trained.num_classes,
                                   device, convention, hd95_empty, postprocess=postprocess)
    write_table(out / "per_frame.csv", rows)
    write_table(out / "per_case.csv", cases_rows)
    return cases_rows
