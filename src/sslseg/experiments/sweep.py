"""The label-efficiency study as one resumable command: ``sslseg sweep CONFIG.yaml --out DIR``.

For each data set x architecture x pretraining method x label budget x seed:
pretrain once per (data set, method, architecture, seed) and reuse it for every budget
(or once per (data set, method, architecture) with ``pretrain_seed``, shared by every seed),
fine-tune on the budget's labelled cases, evaluate on the fixed test cases and
append tidy rows to ``results.csv``. Plus the supervised baseline: every
labelled training case, random initialisation, stronger augmentation.

``jobs: N`` fine-tunes N runs at once in separate processes (each on its share
of the cores; its console output goes to the run's ``output.txt``) once the
pretraining runs they need are done.

Resumable: a run writes ``rows.csv`` then, atomically, ``done.json``; on restart
finished runs are skipped, an unfinished one is redone (its loop resumes from
``last.pt``), and ``results.csv`` is rebuilt from the finished runs, so no row is
ever missing or written twice.

A sweep grows: with more seeds, budgets, methods, modes or archs in its YAML and
the same ``--out``, the finished runs whose config is unchanged (each run folder's
``config.yaml``, and its pretraining run's) are kept and only the new runs train;
a change that would alter a kept run is refused, naming the keys, before anything
trains. Each run holds its folder's lock (:func:`sslseg.experiments.runfolder.claim`)
while it trains.

Layout::

    DIR/config.yaml            the resolved sweep config
    DIR/splits/splits.json     the per-case train/val/test split
    DIR/splits/labelled_<budget>_seed<s>.json   nested labelled subsets
    DIR/pretrain/<method>_<arch>_seed<s>/       pretraining runs
    DIR/runs/<method>_<arch>_<budget>_seed<s>/  fine-tuning runs (rows.csv, done.json, examples.npz)
    DIR/results.csv, DIR/figures/*.png, DIR/report.html

With several data sets (``data: [synthetic-echo, {spec: synthetic-mri, options:
{num_cases: 8}}]``) each has its own split and subsets under
``splits/<data>/``, and its pretraining and run folders are prefixed with
``<data>_`` (the spec with ``:`` and ``/`` made safe).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.splits import labelled_subset, read_json, resolve_budget, write_json
from ..engine.checkpoint import load_checkpoint
from ..engine.trained import open_trained
from ..errors import UserError
from ..evaluate.inference import predict_frames
from ..evaluate.postprocess import parse_steps
from ..io.tables import write_table
from .config import (
    RANGES,
    DataConfig,
    ModelConfig,
    RunConfig,
    apply_set,
    dump_yaml,
    from_dict,
    load_yaml,
    resolve_run_config,
    rule_of,
    stage_dict,
    to_dict,
    validate_config,
)
from .pipeline import by_split, load_cases, run_evaluate, run_finetune, run_pretrain
from .provenance import write_provenance

# dice/hd95: the case's primary scores under its convention (3D per volume for slices, frame mean for
# cines); the per-frame means, EchoNet's pooled-Dice terms and the HD95 penalty count beside them
RESULT_KEYS = ["method", "init", "mode", "arch", "dataset", "budget", "labelled_cases", "seed", "case_id", "dice", "hd95",
               "frames", "hd95_undefined", "run", "convention", "dice_frames", "hd95_frames", "dice_pooled",
               "overlap", "total", "hd95_penalised", "empty_truth_fp", "val_dice"]
#: columns a sweep from before fine-tuning modes did not write (its rows read as supervised)
OPTIONAL_KEYS = ("init", "mode", "val_dice")


@dataclass
class BaselineConfig:
    """The supervised reference: all labelled cases, random init, stronger augmentation."""

    enabled: bool = True
    augment: float = 1.5
    steps: int | None = None  # default: the fine-tuning steps


@dataclass
class SweepData(DataConfig):
    """A run's data section, whose ``spec`` may also list several data sets (specs or ``{spec, options}``
    entries; ``options`` here is then that of the entries given as plain specs)."""

    spec: str | list = DataConfig.spec


@dataclass
class SweepModel:
    """A run's model section less ``arch``: a sweep lists its architectures as ``archs``."""

    options: dict = field(default_factory=dict)  # keyword arguments of every architecture's builder


@dataclass
class SweepConfig:
    """A study: what varies (data sets, archs, methods, budgets, seeds) and what every run shares.

    The shared settings are spelt as in a run's config (:class:`RunConfig`): the
    ``data`` and ``model`` sections, ``pretrain``/``finetune``/``evaluate`` and
    the top-level keys of :data:`RUN_FIELDS`; defaults and allowed values are
    those of the run fields they set.
    """

    data: SweepData = field(default_factory=SweepData)
    model: SweepModel = field(default_factory=SweepModel)
    archs: list = field(default_factory=lambda: [ModelConfig.arch])
    methods: list = field(default_factory=lambda: ["none", "simclr"])
    # fine-tuning modes crossed with the methods: supervised, a semi-supervised mode (sslseg modes), or
    # auto (sslseg finetune's default); a run with a mode other than supervised is labelled method+mode.
    # A methods entry written method+mode (simclr+bcp) is that pairing alone, not crossed with modes
    modes: list = field(default_factory=lambda: ["supervised"])
    budgets: list = field(default_factory=lambda: [1, 4])
    seeds: list = field(default_factory=lambda: [0])
    # None: each seed pretrains its own encoder; an integer: every seed's runs fine-tune the encoder
    # pretrained with that seed (the seeds then vary the labelled subset and the fine-tuning only)
    pretrain_seed: int | None = None
    # fine-tuning runs at once, each in its own process with cores // jobs threads (pretraining runs
    # first, one at a time, on every core); 1 runs everything in this process
    jobs: int = 1
    pretrain: dict = field(default_factory=dict)  # PretrainConfig fields (steps, batch_size, lr, options ...)
    finetune: dict = field(default_factory=dict)  # FinetuneConfig fields
    evaluate: dict = field(default_factory=dict)  # EvaluateConfig fields (convention, hd95_empty)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    devices: int = RunConfig.devices
    precision: str = RunConfig.precision
    # applied to predictions before scoring: none, all, or a list of largest_component, fill_holes
    postprocess: str | list = "none"
    logger: str = RunConfig.logger  # training logs: csv (metrics.csv), or tensorboard as well


# sweep key -> the RunConfig field it sets in every run (the data and model sections are set as a whole)
RUN_FIELDS = {"devices": "devices", "precision": "precision", "logger": "logger"}
SECTIONS = ("pretrain", "finetune", "evaluate")
#: the older spellings of sweep keys -> the run-config spelling that replaced them (still read, with a note)
OLD_KEYS = {"data_options": "data.options", "image_size": "data.image_size", "split_seed": "data.split_seed",
            "val_fraction": "data.val_fraction", "test_fraction": "data.test_fraction",
            "model_options": "model.options"}
#: run-config keys a sweep sets itself, run by run: giving them has no effect, so they are refused, naming
#: the sweep key to use instead
NO_EFFECT = {"seed": "list the seeds as seeds: [0, 1, 2]",
             "model.arch": "list the architectures as archs: [unet]",
             "pretrain.method": "list the pretraining methods as methods: [none, simclr] (none: random init)",
             "finetune.init": "each method's runs start from its own pretraining (none: random init); list them "
                              "as methods: [...]",
             "finetune.labels": "list the labelled-case budgets as budgets: [1, 4, 10%]",
             "finetune.mode": "list the modes to compare as modes: [...]"}

SWEEP_RANGES = {**RANGES, "SweepData": RANGES["DataConfig"],
                "SweepConfig": {"pretrain_seed": (0, None), "jobs": (1, 64),
                                **{key: rule_of(path) for key, path in RUN_FIELDS.items()}},
                "BaselineConfig": {"augment": (0.0, None), "steps": (1, None)}}


def _note(text: str, quiet: bool) -> None:
    if not quiet:
        import sys

        print(f"sslseg sweep: note: {text}", file=sys.stderr)


def normalise(raw: dict, where: str, quiet: bool = False) -> dict:
    """A sweep YAML mapping in the run-config spelling: ``data: spec`` (or a list) becomes ``data: {spec: ...}``;
    an older key (:data:`OLD_KEYS`) moves to its place, with a note on stderr unless ``quiet``.

    Raises:
        ValueError: an older key given beside its new spelling, or a key with no effect (:data:`NO_EFFECT`).
    """
    raw = dict(raw)
    if "data" in raw and not isinstance(raw["data"], dict):
        raw["data"] = {"spec": raw["data"]}
    for old, new in OLD_KEYS.items():
        if old not in raw:
            continue
        section, key = new.split(".")
        block = raw.get(section)
        block = dict(block) if isinstance(block, dict) else {}
        if key in block:
            raise UserError(f"{where}: {old} and {new} are both given; keep {new} (the older spelling is {old})")
        _note(f"{where}: {old} is the older spelling of {new}; write it as {section}: {{{key}: ...}}", quiet)
        block[key] = raw.pop(old)
        raw[section] = block
    if "seed" in raw:
        raise UserError(f"{where}: seed has no effect in a sweep: {NO_EFFECT['seed']}")
    if isinstance(raw.get("model"), dict) and "arch" in raw["model"]:
        raise UserError(f"{where}: model.arch has no effect in a sweep: {NO_EFFECT['model.arch']}")
    return raw


def _set_items(overrides: list[str], quiet: bool = False) -> list[str]:
    """``--set`` items in the run-config spelling: ``data=X`` is ``data.spec=X``, older keys move (with a note)."""
    out = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        head, _, rest = key.partition(".")
        if key == "data":
            key = "data.spec"
        elif head in OLD_KEYS:
            new = OLD_KEYS[head] + (f".{rest}" if rest else "")
            _note(f"--set {key} is the older spelling of --set {new}", quiet)
            key = new
        elif key == "seed" or key == "model.arch":
            raise UserError(f"--set {key} has no effect in a sweep: {NO_EFFECT[key]}")
        out.append(f"{key}{sep}{value}")
    return out


def load_sweep_config(path: str | Path, overrides: list[str] | None = None, quiet: bool = False) -> SweepConfig:
    """A sweep YAML with ``--set`` overrides (``seeds=[0,1,2]``) applied, checked by :func:`validate`."""
    cfg = sweep_config(load_yaml(path), str(path), quiet)
    return validate(apply_set(cfg, _set_items(overrides or [], quiet)))


def sweep_config(raw: dict, where: str = "sweep", quiet: bool = False) -> SweepConfig:
    """A :class:`SweepConfig` from a mapping as a sweep YAML holds it (:func:`normalise`), not yet validated."""
    return from_dict(SweepConfig, normalise(raw, where, quiet), where)


def sweep_dict(sw: SweepConfig) -> dict:
    """A sweep's config as YAML writes it, defaults included: the ``pretrain``, ``finetune`` and ``evaluate``
    sections as every run resolves them (less the keys the sweep sets run by run, :data:`NO_EFFECT`)."""
    d = asdict(sw)
    rc = to_dict(run_config(sw, sw.archs[0], sw.seeds[0]))
    for section in SECTIONS:
        d[section] = {k: v for k, v in rc[section].items() if f"{section}.{k}" not in NO_EFFECT}
    return d


def validate(cfg: SweepConfig) -> SweepConfig:
    """Check a sweep before hours of training: its own keys, then every run's config as the runs build it."""
    from ..data.splits import parse_budget
    from ..pretrain.build import METHODS

    validate_config(cfg, "sweep", SWEEP_RANGES)
    for key in ("archs", "methods", "modes"):
        bad = [v for v in getattr(cfg, key) if not isinstance(v, str)]
        if bad:
            raise UserError(f"sweep.{key}: {bad[0]!r} is not allowed: expected names")
    bad_seeds = [s for s in cfg.seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad_seeds:
        raise UserError(f"sweep.seeds: {bad_seeds[0]!r} is not allowed: expected integers >= 0")
    if not cfg.seeds:
        raise UserError("sweep: give at least one seed")
    from ..finetune.modes import check_mode

    for label in cfg.methods:
        m, mode = split_label(label)
        try:
            METHODS.check(m, also=("none",))  # none: random initialisation, the reference
            if "+" in label:  # method+mode: this pairing alone, not crossed with modes
                check_mode(mode)
        except ValueError as err:
            raise UserError(f"sweep: {err}") from None
    for section in ("pretrain", "finetune"):
        for key in getattr(cfg, section) or {}:
            if f"{section}.{key}" in NO_EFFECT:
                raise UserError(f"sweep.{section}.{key} has no effect in a sweep: {NO_EFFECT[f'{section}.{key}']}")
    if not cfg.modes:
        raise UserError("sweep: give at least one fine-tuning mode (modes: [supervised])")
    if len(set(cfg.modes)) != len(cfg.modes):
        raise UserError(f"sweep.modes: a mode is listed twice in {cfg.modes}")
    for mode in cfg.modes:
        try:
            check_mode(mode)
        except ValueError as err:
            raise UserError(f"sweep.modes: {err}") from None
    for b in cfg.budgets:
        parse_budget(b)
    if cfg.devices != 1:
        # a sweep writes its tables from one process; its stages do run on several (sslseg pretrain/finetune)
        raise UserError(f"sweep: devices {cfg.devices} is not supported; a sweep runs on one device "
                        "(run sslseg pretrain / finetune with --devices N for multi-device stages)")
    for data in datasets(cfg):
        for arch in cfg.archs:
            run_config(cfg, arch, cfg.seeds[0], data)
            for m in dict.fromkeys(split_label(label)[0] for label in cfg.methods):
                if m != "none":
                    # every method's options, before the first run: a sweep must not die at its third method
                    run_config(cfg, arch, cfg.seeds[0], data, {"pretrain.method": m}, stage="pretrain")
    from ..evaluate.postprocess import parse_steps

    parse_steps(cfg.postprocess)
    return cfg


def datasets(sw: SweepConfig) -> list[tuple[str, dict]]:
    """``(spec, options)`` of every data set of the sweep, in order.

    Raises:
        ValueError: an entry that is neither a spec nor ``{spec, options}``, or a repeated spec.
    """
    entries = sw.data.spec if isinstance(sw.data.spec, list) else [sw.data.spec]
    if not entries:
        raise UserError("sweep: give at least one data set")
    out: list[tuple[str, dict]] = []
    for e in entries:
        if isinstance(e, str):
            out.append((e, dict(sw.data.options)))
        elif isinstance(e, dict) and isinstance(e.get("spec"), str) and set(e) <= {"spec", "options"}:
            out.append((e["spec"], dict(e.get("options") or {})))
        else:
            raise UserError(f"sweep: data entry {e!r} is neither a spec nor {{spec: ..., options: {{...}}}}")
    specs = [spec for spec, _ in out]
    if len(set(specs)) != len(specs):
        raise UserError(f"sweep: a data set is listed twice in {specs}")
    return out


def data_tag(spec: str) -> str:
    """A folder-safe name for a data spec: ``echonet:/data/EchoNet`` -> ``echonet-data-EchoNet``."""
    tag = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in spec)
    return "-".join(part for part in tag.split("-") if part) or "data"


def run_config(sw: SweepConfig, arch: str, seed: int, data: tuple[str, dict] | None = None,
               overrides: dict | None = None, stage: str | None = None) -> RunConfig:
    """The config of one run of the sweep, resolved as the command line resolves its own.

    Args:
        data: one of :func:`datasets` (default the first).
        overrides: dotted keys set after the sweep's own (``{"pretrain.method": "simclr"}``).
        stage: checked as :func:`~sslseg.experiments.config.resolve_run_config` checks it.
    """
    spec, options = data if data is not None else datasets(sw)[0]
    values = {"seed": int(seed), **{f"data.{k}": v for k, v in asdict(sw.data).items()}, "data.spec": spec,
              "data.options": options, "model.arch": arch, "model.options": sw.model.options}
    values.update({path: getattr(sw, key) for key, path in RUN_FIELDS.items()})
    for section in SECTIONS:
        values.update({f"{section}.{k}": v for k, v in (getattr(sw, section) or {}).items()})
    return resolve_run_config(None, {**values, **(overrides or {})}, stage=stage, where="sweep")


def budget_tag(budget) -> str:
    return str(budget).replace("%", "pct")


def mode_label(method: str, mode: str) -> str:
    """The name a run goes by in ``results.csv`` and the report: ``simclr``, ``simclr+unimatch``, ``none+bcp``."""
    return method if mode == "supervised" else f"{method}+{mode}"


def split_label(label: str) -> tuple[str, str]:
    """``simclr+unimatch`` -> (``simclr``, ``unimatch``); ``simclr`` -> (``simclr``, ``supervised``)."""
    method, _, mode = label.partition("+")
    return method, mode or "supervised"


def plan(sw: SweepConfig, n_train: int, unlabelled: Callable[[int], bool] | None = None) -> list[dict]:
    """Every fine-tuning run of the sweep, in order (budgets that exceed the data are refused).

    ``unlabelled(k)``: whether the training split holds unlabelled frames beside ``k`` labelled cases
    (resolves the mode ``auto``; default yes).
    """
    from ..finetune.modes import AUTO, resolve_mode

    runs = []
    for arch in sw.archs:
        for seed in sw.seeds:
            for label in sw.methods:
                method, own_mode = split_label(label)
                for budget in sw.budgets:
                    k = resolve_budget(budget, n_train)
                    has_unlabelled = unlabelled(k) if unlabelled is not None else True
                    seen = set()
                    for mode in ([own_mode] if "+" in label else sw.modes):
                        if mode == AUTO:
                            mode = resolve_mode(AUTO, int(has_unlabelled), k)
                        if mode in seen:  # auto resolved to a mode listed as well
                            continue
                        seen.add(mode)
                        runs.append({"arch": arch, "seed": int(seed), "method": mode_label(method, mode),
                                     "init": method, "mode": mode, "budget": str(budget), "k": k,
                                     "kind": "finetune", "pretrain_seed": sw.pretrain_seed})
            if sw.baseline.enabled:
                runs.append({"arch": arch, "seed": int(seed), "method": "supervised", "init": "none",
                             "mode": "supervised", "budget": "100%", "k": n_train, "kind": "baseline"})
    return runs


def run_key(r: dict) -> str:
    prefix = f"{r['data']}_" if r.get("data") else ""
    return f"{prefix}{r['method']}_{r['arch']}_{budget_tag(r['budget'])}_seed{r['seed']}"


def run_sweep(config_path: str | Path | SweepConfig, out_dir: str | Path, overrides: list[str] | None = None,
              write_report_at_end: bool = True) -> Path:
    """Run (or resume) a sweep; returns the path of ``results.csv``."""
    out = Path(out_dir)
    sw = config_path if isinstance(config_path, SweepConfig) else load_sweep_config(config_path, overrides)
    saved = out / "config.yaml"
    if saved.exists():
        _check_scoring(_previous(saved), sw, out)

    sets = datasets(sw)
    todo = []  # per data set: its cases, its runs, its labelled subsets
    for spec, options in sets:
        tag = data_tag(spec) if len(sets) > 1 else ""
        split_dir = out / "splits" / tag if tag else out / "splits"
        base = run_config(sw, sw.archs[0], sw.seeds[0], (spec, options))
        cases = load_cases(base, splits_path=split_dir / "splits.json")
        train = by_split(cases, "train")
        train_ids = [c.case_id for c in train if c.masks]
        # unlabelled frames beside k labelled cases: unselected cases, cases without masks, unlabelled frames
        frames_beside = any(c.num_frames > len(c.labelled_indices) for c in train)

        n_train = len(train_ids)
        try:
            runs = [{**r, "data": tag, "spec": spec, "options": options}
                    for r in plan(sw, n_train, lambda k, n=n_train, more=frames_beside: more or k < n)]
        except ValueError as e:
            raise UserError(f"sweep, data set {spec}: {e}") from None
        # nested labelled subsets, drawn once per (budget, seed), saved and reused
        subsets: dict[tuple[str, int], list[str]] = {}
        for r in runs:
            key = (r["budget"], r["seed"])
            if key in subsets:
                continue
            path = split_dir / f"labelled_{budget_tag(r['budget'])}_seed{r['seed']}.json"
            if path.exists():
                subsets[key] = list(read_json(path)["case_ids"])
            else:
                subsets[key] = labelled_subset(train_ids, r["k"], r["seed"])
                write_json(path, {"budget": r["budget"], "seed": r["seed"], "num_cases": r["k"],
                                  "case_ids": subsets[key]})
        todo.append((cases, runs, subsets))
    # a sweep grows: finished runs whose config is unchanged are kept, new ones run; a change that would make
    # a kept run's rows stale is refused, naming its keys, before anything is written
    _check_unchanged(sw, [r for _, runs, _ in todo for r in runs], out)
    dump_yaml(sweep_dict(sw), saved)
    write_provenance(out)  # the command line, commit and packages of the latest invocation

    total = sum(len(runs) for _, runs, _ in todo)
    done = sum((out / "runs" / run_key(r) / "done.json").exists() for _, runs, _ in todo for r in runs)
    # initial=done: runs finished before a restart do not count towards the speed (and the ETA)
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", position=0, dynamic_ncols=True, disable=None)
    planned = {run_key(r) for _, runs, _ in todo for r in runs}
    if sw.jobs > 1:
        _run_parallel(sw, todo, out, bar, done, total)
    else:
        for cases, runs, subsets in todo:
            for r in runs:
                run_dir = out / "runs" / run_key(r)
                if (run_dir / "done.json").exists():
                    continue
                bar.set_postfix_str(run_key(r))
                if bar.disable:  # no bar on a file or pipe: a plain line per run
                    print(f"sweep: run {done + 1}/{total}: {run_key(r)}", flush=True)
                _run_one(sw, r, cases, subsets[(r["budget"], r["seed"])], run_dir, out)
                collect_results(out, planned)
                bar.update(1)
                done += 1
    bar.close()
    results = collect_results(out, planned)
    for cases, runs, _ in todo:
        for arch in sw.archs:
            save_comparison(out, [r for r in runs if r["arch"] == arch], cases, parse_steps(sw.postprocess))
    if write_report_at_end:
        from ..report.html import write_report

        write_report(out)
    return results


def _previous(saved: Path) -> SweepConfig:
    """The config a sweep folder's earlier invocation saved (older spellings read silently)."""
    try:
        return sweep_config(load_yaml(saved), str(saved), quiet=True)
    except ValueError as err:
        raise UserError(f"{saved} cannot be read as a sweep config ({err}); use a new --out") from None


def _check_scoring(prev: SweepConfig, sw: SweepConfig, out: Path) -> None:
    """Refuse a change of how runs are scored (``evaluate``, ``postprocess``) once a run has finished:
    the kept runs' rows would be scored one way and the new ones another."""
    if not any((out / "runs").glob("*/done.json")):
        return
    changed = []
    try:
        old_eval = asdict(run_config(prev, prev.archs[0], prev.seeds[0]).evaluate)
    except ValueError:
        old_eval = None  # an earlier config that no longer resolves: its runs are checked one by one
    if old_eval is not None:
        new_eval = asdict(run_config(sw, sw.archs[0], sw.seeds[0]).evaluate)
        changed += [f"evaluate.{k}: {old_eval[k]!r} there, {v!r} now" for k, v in new_eval.items() if old_eval[k] != v]
    if parse_steps(prev.postprocess) != parse_steps(sw.postprocess):
        changed.append(f"postprocess: {prev.postprocess!r} there, {sw.postprocess!r} now")
    if changed:
        raise UserError(f"{out} holds runs scored with another config ({'; '.join(changed)}); every finished run "
                        "would change: undo the change or use a new --out")


def _check_unchanged(sw: SweepConfig, runs: list[dict], out: Path) -> None:
    """Refuse, in one line naming the changed keys, when a run folder of the sweep (fine-tuning or pretraining)
    holds a run made with another config than the one the sweep now asks of it."""
    from .runfolder import config_differences, read_config

    changed: dict[str, str] = {}  # key -> "old there, new now"
    where: list[str] = []
    seen_pre: set[Path] = set()
    for r in runs:
        folders = [(out / "runs" / run_key(r), lambda r=r: stage_dict(_finetune_config(sw, r, out), "finetune"))]
        if r["kind"] == "finetune" and r["init"] != "none" and _pretrain_dir(r, out) not in seen_pre:
            seen_pre.add(_pretrain_dir(r, out))
            folders.append((_pretrain_dir(r, out), lambda r=r: stage_dict(_pretrain_config(sw, r), "pretrain")))
        for folder, request in folders:
            saved = read_config(folder / "config.yaml")
            if saved is None:
                continue
            diffs = config_differences(saved, request())
            for key, old, new in diffs:
                changed.setdefault(key, f"{old!r} there, {new!r} now")
            if diffs:
                where.append(str(folder.relative_to(out)))
    if changed:
        keys = "; ".join(f"{k}: {v}" for k, v in changed.items())
        raise UserError(f"{out} holds {len(where)} run(s) made with another config ({keys}; e.g. {where[0]}): "
                        "a sweep reuses a run only where its config is unchanged (more seeds, budgets, methods "
                        "or modes add runs); undo the change or use a new --out")


def _pretrain_dir(r: dict, out: Path) -> Path:
    """The pretraining run a fine-tuning run ``r`` starts from: one per (data set, method, arch, seed)."""
    seed = r["seed"] if r.get("pretrain_seed") is None else r["pretrain_seed"]
    prefix = f"{r['data']}_" if r.get("data") else ""
    return out / "pretrain" / f"{prefix}{r['init']}_{r['arch']}_seed{seed}"


def _pretrain_config(sw: SweepConfig, r: dict) -> RunConfig:
    seed = r["seed"] if r.get("pretrain_seed") is None else r["pretrain_seed"]
    return run_config(sw, r["arch"], int(seed), (r["spec"], r["options"]), {"pretrain.method": r["init"]},
                      stage="pretrain")


def _finetune_config(sw: SweepConfig, r: dict, out: Path, stage: str | None = None) -> RunConfig:
    """The config of fine-tuning run ``r`` (``stage="finetune"`` checks its checkpoint exists)."""
    init = "random"
    if r["kind"] == "finetune" and r["init"] != "none":
        init = str(_pretrain_dir(r, out) / "checkpoint.pt")
    run = {"finetune.init": init, "finetune.labels": r["budget"], "finetune.mode": r["mode"]}
    if r["kind"] == "baseline":
        run["finetune.augment"] = sw.baseline.augment
        if sw.baseline.steps:
            run.update({"finetune.steps": int(sw.baseline.steps), "finetune.epochs": None})
    return run_config(sw, r["arch"], r["seed"], (r["spec"], r["options"]), run, stage=stage)


def _run_one(sw: SweepConfig, r: dict, cases, labelled: list[str], run_dir: Path, out: Path) -> None:
    """Fine-tune, evaluate and record one run, holding its folder's lock; ``done.json`` is written last."""
    from .runfolder import claim

    if r["kind"] == "finetune" and r["init"] != "none":
        _pretrained(sw, r, cases, out)
    rc = _finetune_config(sw, r, out, stage="finetune")
    with claim(run_dir, stage_dict(rc, "finetune")):  # a second process (sslseg finetune --out here) is refused
        ckpt = run_finetune(rc, run_dir, cases, labelled_ids=labelled)
        per_case = run_evaluate(ckpt, cases, "test", run_dir, rc.evaluate.convention, rc.evaluate.hd95_empty,
                                postprocess=parse_steps(sw.postprocess))
        # the run's best validation Dice (what chose its checkpoint): recipe choices read this, never the test
        val = load_checkpoint(ckpt).get("best_val") or {}
        rows = [{"method": r["method"], "init": r["init"], "mode": r["mode"], "arch": r["arch"], "dataset": r["spec"],
                 "budget": r["budget"], "labelled_cases": r["k"], "seed": r["seed"], **pc, "run": run_key(r),
                 "val_dice": val.get("dice", math.nan)} for pc in per_case]
        write_table(run_dir / "rows.csv", rows)
        save_examples(ckpt, cases, per_case, run_dir / "examples.npz")
        write_json(run_dir / "done.json", {"rows": len(rows)})  # the completion marker, written last


def _pretrained(sw: SweepConfig, r: dict, cases, out: Path) -> Path:
    """The pretraining checkpoint fine-tuning run ``r`` starts from, pretrained first (holding its folder's
    lock) when missing."""
    from .runfolder import claim

    pre_dir = _pretrain_dir(r, out)
    ckpt = pre_dir / "checkpoint.pt"
    if not ckpt.exists():
        pc = _pretrain_config(sw, r)
        with claim(pre_dir, stage_dict(pc, "pretrain")):
            run_pretrain(pc, pre_dir, cases)
    return ckpt


# the worker processes' share of the sweep (set by _init_worker: fork inherits it, spawn pickles it once)
_WORKER: dict = {}


def _init_worker(sw: SweepConfig, out: Path, cases_by_data: dict, threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)
    _WORKER.update(sw=sw, out=out, cases=cases_by_data)


def _die_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker process when the sweep's main process ``parent`` ends, however it ends.

    A killed main process cannot close its pool: its workers would go on training (and holding their run
    folders' locks, and the sweep folder's, inherited) for minutes. On Linux the kernel sends SIGKILL when
    the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and as a second guard, a thread checks every
    ``every`` seconds whether this process was handed to another parent.
    """
    import os
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: the thread alone
            pass
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="sslseg-parent-watch", daemon=True).start()


def _worker_run(r: dict, labelled: list[str]) -> str:
    """One fine-tuning run in a worker process; its console output goes to the run's ``output.txt``."""
    import contextlib

    run_dir = _WORKER["out"] / "runs" / run_key(r)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "output.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _run_one(_WORKER["sw"], r, _WORKER["cases"][r["data"]], labelled, run_dir, _WORKER["out"])
    return run_key(r)


def _run_parallel(sw: SweepConfig, todo: list, out: Path, bar, done: int, total: int) -> None:
    """Pretrain what is missing here, one run at a time on every core, then fine-tune ``sw.jobs`` runs at once."""
    import multiprocessing as mp
    import os
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ..engine.distributed import usable_cores

    pending = []
    for cases, runs, subsets in todo:
        for r in runs:
            if (out / "runs" / run_key(r) / "done.json").exists():
                continue
            if r["kind"] == "finetune" and r["init"] != "none":
                _pretrained(sw, r, cases, out)
            pending.append((r, subsets[(r["budget"], r["seed"])]))
    if not pending:
        return
    cores = usable_cores()
    threads = max(1, cores // sw.jobs)
    # fork shares the cases with the workers at no cost; spawn pickles them once: on macOS and Windows,
    # and with CUDA, which cannot be used again in a forked child once the parent has touched it
    import torch

    fork = "fork" in mp.get_all_start_methods() and not _is_macos() and not torch.cuda.is_available()
    ctx = mp.get_context("fork" if fork else "spawn")
    cases_by_data = {runs[0]["data"]: cases for cases, runs, _ in todo if runs}
    print(f"sweep: fine-tuning {len(pending)} runs, {sw.jobs} at a time ({threads} thread(s) each); "
          "each run's output goes to its output.txt", flush=True)
    pool = ProcessPoolExecutor(max_workers=sw.jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(sw, out, cases_by_data, threads, os.getpid()))
    # SIGTERM (kill, a scheduler's time limit) ends this process through the handler below, so the
    # workers are stopped with it rather than left training
    term = signal.signal(signal.SIGTERM, _exit_on_term) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        futures = {pool.submit(_worker_run, r, labelled): r for r, labelled in pending}
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for f in finished:
                r = futures[f]
                try:
                    f.result()
                except Exception:
                    for other in remaining:
                        other.cancel()
                    print(f"sweep: run {run_key(r)} failed; its output: "
                          f"{out / 'runs' / run_key(r) / 'output.txt'}", flush=True)
                    raise
                done += 1
                collect_results(out, {run_key(r) for _, runs, _ in todo for r in runs})
                bar.update(1)
                if bar.disable:
                    print(f"sweep: run {done}/{total} done: {run_key(r)}", flush=True)
    except (KeyboardInterrupt, SystemExit):
        # interrupted: stop the runs in flight now (each resumes from its last.pt), not after minutes
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=True)  # a failed run: the runs in flight finish first, their rows kept
        raise
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
    pool.shutdown(wait=True)


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _is_macos() -> bool:
    import sys

    return sys.platform == "darwin"


def collect_results(out: str | Path, runs: set[str] | None = None) -> Path:
    """Rebuild ``results.csv`` from every finished run's ``rows.csv`` (atomic).

    Args:
        runs: the run folders to gather (:func:`run_key`), those of the sweep's config; None: every one
            (a sweep's YAML with fewer seeds, budgets or methods than before reports those only).
    """
    out = Path(out)
    rows = []
    for done in sorted((out / "runs").glob("*/done.json")):
        if runs is not None and done.parent.name not in runs:
            continue
        with open(done.parent / "rows.csv", newline="") as f:
            rows.extend(csv.DictReader(f))
    return write_table(out / "results.csv", rows, RESULT_KEYS, extrasaction="ignore")


def save_examples(ckpt_path: Path, cases, per_case: list[dict], path: Path) -> None:
    """Image, ground truth and prediction of the best, median and worst test case (first labelled frame)."""
    ok = [r for r in per_case if not math.isnan(r["dice"])]
    if not ok:
        return
    ranked = sorted(ok, key=lambda r: r["dice"])
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    trained = open_trained(ckpt_path)
    by_id = {c.case_id: c for c in cases}
    arrays = {}
    for name, r in picks.items():
        case = by_id[r["case_id"]]
        i = case.labelled_indices[0]
        frame = np.asarray(case.frames[i : i + 1])
        pred = predict_frames(trained.model, frame, trained.normalizer, trained.image_size)[0]
        img = frame[0] if frame.ndim == 3 else frame[0, 0]
        arrays[f"{name}_image"] = img.astype(np.float32)
        arrays[f"{name}_gt"] = np.asarray(case.masks[i]).astype(np.uint8)
        arrays[f"{name}_pred"] = pred.astype(np.uint8)
        arrays[f"{name}_info"] = np.array([r["case_id"], str(i), f"{r['dice']:.4f}"])
    tmp = path.with_name(".examples.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def comparison_path(out: Path, runs: list[dict]) -> Path:
    """Where :func:`save_comparison` writes the frames of a data set and arch: ``DIR/examples/<...>.npz``."""
    r = runs[0]
    prefix = f"{r['data']}_" if r.get("data") else ""
    return out / "examples" / f"{prefix}{r['arch']}.npz"


def save_comparison(out: Path, runs: list[dict], cases, postprocess: dict | None = None) -> Path | None:
    """Every method's prediction on the same frames, for the report's side-by-side overlays.

    At the smallest budget and the first seed, the labelled test frames are
    ranked by random init's Dice (its ``per_frame.csv``; the first method's when
    there is no random init) and the best, median and worst are kept. Each finished
    run at that budget and seed, and the supervised baseline, predicts them; each
    prediction is stored with that frame's own Dice (mean over the classes present
    in the ground truth), post-processed as the sweep scores.

    Args:
        out: the sweep folder.
        runs: the planned runs of one data set and arch (:func:`plan` rows with ``data``).
        cases: that data set's cases.
        postprocess: :func:`sslseg.evaluate.postprocess.postprocess` keywords, or None.

    Returns:
        The ``.npz`` written, or None when no run at that budget has finished.
    """
    from ..evaluate.metrics import dice_per_class
    from ..evaluate.postprocess import postprocess as clean

    finetune = [r for r in runs if r["kind"] == "finetune"]
    if not finetune:
        return None
    k0, s0 = min(r["k"] for r in finetune), finetune[0]["seed"]
    cols = [r for r in finetune if r["k"] == k0 and r["seed"] == s0]
    cols = sorted(cols, key=lambda r: r["method"] != "none")  # random init first
    cols += [r for r in runs if r["kind"] == "baseline" and r["seed"] == s0]
    cols = [r for r in cols if (out / "runs" / run_key(r) / "done.json").exists()]
    ref_csv = out / "runs" / run_key(cols[0]) / "per_frame.csv" if cols else None
    if ref_csv is None or not ref_csv.exists():
        return None
    frame_dice: dict[tuple[str, int], list[float]] = {}
    for row in csv.DictReader(open(ref_csv, newline="")):
        frame_dice.setdefault((row["case_id"], int(row["index"])), []).append(float(row["dice"]))
    scored = sorted((float(np.nanmean(v)), key) for key, v in frame_dice.items() if not np.isnan(v).all())
    if not scored:
        return None
    picks = {"worst": scored[0][1], "median": scored[len(scored) // 2][1], "best": scored[-1][1]}
    rows = [(name, key) for name, key in (("best", picks["best"]), ("median", picks["median"]),
                                          ("worst", picks["worst"]))]
    rows = [rk for i, rk in enumerate(rows) if rk[1] not in [k for _, k in rows[:i]]]  # distinct frames only
    ref_name = "random init" if cols[0]["method"] == "none" else cols[0]["method"]
    labels = []
    for r in cols:
        name = {"none": "random init", "supervised": f"supervised (all {r['k']})"}.get(r["method"], r["method"])
        labels.append(name)
    by_id = {c.case_id: c for c in cases}
    arrays: dict[str, np.ndarray] = {"rows": np.array([f"{n} for {ref_name}" for n, _ in rows]),
                                     "columns": np.array(labels)}
    for i, (_, (case_id, idx)) in enumerate(rows):
        case = by_id[case_id]
        frame = np.asarray(case.frames[idx : idx + 1])
        arrays[f"image_{i}"] = (frame[0] if frame.ndim == 3 else frame[0, 0]).astype(np.float32)
        arrays[f"gt_{i}"] = np.asarray(case.masks[idx]).astype(np.uint8)
        arrays[f"info_{i}"] = np.array([case_id, str(idx)])
    for j, r in enumerate(cols):
        trained = open_trained(out / "runs" / run_key(r) / "checkpoint.pt")
        num_classes = trained.num_classes
        for i, (_, (case_id, idx)) in enumerate(rows):
            frame = np.asarray(by_id[case_id].frames[idx : idx + 1])
            pred = predict_frames(trained.model, frame, trained.normalizer, trained.image_size)
            if postprocess and any(postprocess.values()):
                pred = clean(pred, num_classes, **postprocess)
            gt = arrays[f"gt_{i}"]
            d = dice_per_class(pred[0], gt, list(range(1, num_classes)))
            arrays[f"pred_{i}_{j}"] = pred[0].astype(np.uint8)
            arrays[f"dice_{i}_{j}"] = np.array(np.nanmean(d) if not np.isnan(d).all() else np.nan)
    path = comparison_path(out, runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path
