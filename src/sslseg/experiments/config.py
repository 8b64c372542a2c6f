"""Experiment configuration: dataclasses with the defaults, YAML in and out, ``--set`` overrides.

Only the CLI and ``experiments/`` read configuration; everything below takes
plain typed arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data.splits import TEST_FRACTION, VAL_FRACTION
from ..engine.precision import PRECISIONS as FABRIC_PRECISIONS
from ..errors import UserError
from ..io.files import atomic_write


@dataclass
class DataConfig:
    spec: str = "synthetic-echo"
    image_size: int = 112
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    split_seed: int = 0
    options: dict = field(default_factory=dict)  # passed to the reader (e.g. num_cases)
    # frames held on the training device, each step's batch cut there (sslseg.data.batches.batch_source):
    # auto = when a measured memory check says they fit (never on a CPU), always, never. The batches are the
    # same either way, so a run folder's comparison ignores it.
    resident: str = "auto"


#: where a run's frames live (sslseg.data.batches.batch_source)
RESIDENT = ("auto", "always", "never")


@dataclass
class ModelConfig:
    arch: str = "unet"
    # keyword arguments of the architecture's builder; empty = its defaults (they differ per architecture)
    options: dict = field(default_factory=dict)


@dataclass
class PretrainConfig:
    method: str = "simclr"
    # 1600: SimCLR paid off on synthetic-echo at 1600 steps and not at 400 (README, "Does it pay off?")
    steps: int = 1600
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    options: dict = field(default_factory=dict)  # method keyword arguments (temperature, ...)
    # on several processes, BatchNorm statistics over the global batch (SimCLR's global BN)
    sync_batchnorm: bool = True


@dataclass
class FinetuneConfig:
    init: str = "random"  # "random" or a checkpoint path
    labels: str = "4"
    # supervised, a semi-supervised mode (unimatch, bcp: sslseg.finetune.modes), or auto: the mode measured
    # best on validation where the training split holds unlabelled frames (today supervised), else supervised
    mode: str = "auto"
    mode_options: dict = field(default_factory=dict)  # the mode's keyword arguments (threshold, ...)
    steps: int = 600
    epochs: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    loss: str = "dice_ce"
    augment: float = 1.0  # strength of the supervised augmentation (0 disables)
    val_every: int = 100
    encoder_lr_ratio: float = 1.0  # lr multiplier for pretrained encoder weights
    # encoder frozen (weights and BatchNorm statistics) for the first k steps; None = automatic:
    # freeze_encoder_fraction of the steps when starting from a pretrained encoder (linear-probe-then-
    # fine-tune), 0 from random
    freeze_encoder_steps: int | None = None
    freeze_encoder_epochs: int | None = None  # the same in epochs of the labelled frames (overrides steps)
    # None = automatic: half of the steps with one labelled case, a fifth with more (finetune.recipe.freeze_steps)
    freeze_encoder_fraction: float | None = None
    # re-estimate a pretrained encoder's BatchNorm statistics on plain training frames (labelled or
    # not) before fine-tuning: pretext tasks normalised augmented views (AdaBN, Li et al. 2016)
    recalibrate_bn: bool = False
    # which pretrained parts to load (e.g. [encoder]); None = every part the pretext trained
    transfer_parts: list | None = None


@dataclass
class EvaluateConfig:
    # "auto": volumes (slices) by 3D Dice/HD95 per volume, cines by the mean of their frames;
    # "volume" or "frame" force one (sslseg.evaluate.inference.score_cases)
    convention: str = "auto"
    # an HD95 with an empty prediction (or truth) on one side only: "diagonal" = the image
    # diagonal in mm, counted in hd95_penalised; "nan" = left out of the means, counted in hd95_undefined
    hd95_empty: str = "diagonal"


@dataclass
class RunConfig:
    seed: int = 0
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32-true"
    logger: str = "csv"  # csv (metrics.csv), or tensorboard as well (sslseg.engine.progress)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def to_dict(cfg) -> dict:
    return asdict(cfg)


def from_dict(cls, data: dict | None, where: str = "config", _key: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and non-mapping sections by name."""
    section = f"{where}: {_key}" if _key else where
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{section} = {data!r} is not allowed: expected a mapping of keys to values")
    data = dict(data or {})
    names = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UserError(f"{section}: unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        f = names[k]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default) and not is_dataclass(v):
            kwargs[k] = from_dict(type(default), v, where, f"{_key}.{k}" if _key else k)
        else:
            kwargs[k] = v
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    class Loader(yaml.SafeLoader):
        """safe_load, refusing a key given twice in one mapping (YAML keeps the last silently: a lost block)."""

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise UserError(f"{path}: key {key!r} appears twice in one section, at line "
                                    f"{seen[key] + 1} and line {key_node.start_mark.line + 1}; "
                                    "YAML would keep only the last; merge them")
                seen.setdefault(key, key_node.start_mark.line)
            return super().construct_mapping(node, deep=deep)

    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=Loader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_set(cfg, assignments: list[str]):
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a dataclass tree."""
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value: Any = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        assign(cfg, key, value, f"--set {key}")
    return cfg


def assign(cfg, key: str, value: Any, origin: str) -> None:
    """Set the field a dotted ``key`` names in a dataclass tree (a key under a dict field adds to the dict).

    Raises:
        ValueError: one line starting with ``origin`` (where the key came from) when no field has that name.
    """
    target = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if is_dataclass(target):
            if not hasattr(target, part):
                raise UserError(f"{origin}: unknown key {'.'.join(parts[: i + 1])!r}")
            target = getattr(target, part)
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise UserError(f"{origin}: {'.'.join(parts[:i])!r} is not a section")
    last = parts[-1]
    if is_dataclass(target):
        if not hasattr(target, last):
            valid = ", ".join(f.name for f in fields(target))
            raise UserError(f"{origin}: unknown key {last!r}; valid keys here: {valid}")
        setattr(target, last, value)
    elif isinstance(target, dict):
        target[last] = value


def resolve_run_config(base: RunConfig | None = None, overrides: dict[str, Any] | None = None,
                       sets: list[str] | None = None, stage: str | None = None, where: str = "") -> RunConfig:
    """The one way to a run's configuration, for the command line and the sweep alike.

    ``base`` (a copy; the defaults when None), then ``overrides`` (dotted key ->
    value, in order), then ``--set`` items; every field is checked against its
    type and range (:func:`validate_config`) and the choices against what exists
    (:func:`check_choices`).

    Args:
        stage: ``"pretrain"`` or ``"finetune"``: that stage's own choices are checked too.
        where: the source named in error messages (``"sweep"``); empty for the command line.

    Raises:
        ValueError: one line naming the key, the value and what is allowed.
    """
    cfg = copy.deepcopy(base) if base is not None else RunConfig()
    for key, value in (overrides or {}).items():
        assign(cfg, key, copy.deepcopy(value), f"{where}: {key}" if where else key)
    apply_set(cfg, sets or [])
    validate_config(cfg, where)
    try:
        check_choices(cfg, stage)
    except ValueError as err:
        raise UserError(f"{where}: {err}" if where else str(err)) from None
    return cfg


def check_choices(cfg: RunConfig, stage: str | None = None) -> None:
    """The names in ``cfg`` against the registries and lists they pick from; the stage's inputs.

    Data set, architecture, evaluation conventions, loss and logger always; for
    ``pretrain`` the method and its options; for ``finetune`` the label budget
    and the ``init`` checkpoint file.

    Raises:
        ValueError: one line naming the value and the valid choices.
    """
    from ..data.registry import check_spec
    from ..engine.progress import check_logger
    from ..evaluate.inference import CONVENTIONS, HD95_EMPTY
    from ..finetune.losses import LOSSES
    from ..models.build import MODELS

    check_spec(cfg.data.spec)
    check_data_options(cfg.data.spec, cfg.data.options)
    if cfg.data.resident not in RESIDENT:
        raise UserError(f"data.resident = {cfg.data.resident!r} is not allowed: expected one of {', '.join(RESIDENT)}")
    MODELS.check(cfg.model.arch)
    check_nested_options("model.options", cfg.model.arch, MODELS.get(cfg.model.arch), cfg.model.options,
                         skip=DATA_KEYWORDS)
    from ..models.build import check_model_options

    check_model_options(cfg.model.arch, cfg.model.options)
    for key, allowed in (("convention", CONVENTIONS), ("hd95_empty", HD95_EMPTY)):
        value = getattr(cfg.evaluate, key)
        if value not in allowed:
            raise UserError(f"evaluate.{key} must be one of {', '.join(allowed)}, got {value!r}")
    from ..finetune.modes import check_mode

    check_mode(cfg.finetune.mode, cfg.finetune.mode_options)
    if cfg.finetune.loss not in LOSSES:
        raise UserError(f"finetune.loss = {cfg.finetune.loss!r} is not allowed: expected one of {', '.join(LOSSES)}")
    check_logger(cfg.logger)
    if stage == "pretrain":
        from ..pretrain.build import method_options

        method_options(cfg.pretrain.method, cfg.pretrain.options)  # the method's name, then its options
    elif stage == "finetune":
        from ..data.splits import parse_budget

        parse_budget(cfg.finetune.labels)
        if cfg.finetune.init != "random" and not Path(cfg.finetune.init).is_file():
            raise UserError(f"checkpoint not found: {cfg.finetune.init} (give a checkpoint file or 'random')")


#: the sections of a run's config each stage reads (the top-level keys seed, devices, ... always);
#: a run folder's ``config.yaml`` records these only
STAGE_SECTIONS = {"pretrain": ("data", "model", "pretrain"), "finetune": ("data", "model", "finetune")}
SECTION_NAMES = ("data", "model", "pretrain", "finetune", "evaluate")
#: model keywords the data decide (image channels, classes), not the configuration
DATA_KEYWORDS = ("in_channels", "num_classes")


def model_defaults(arch: str) -> dict:
    """The keyword defaults of architecture ``arch``'s builder, less those the data decide."""
    import inspect

    from ..models.build import MODELS

    params = inspect.signature(MODELS.get(arch)).parameters.values()
    return {p.name: p.default for p in params
            if p.default is not p.empty and p.name not in DATA_KEYWORDS and p.kind is not p.VAR_KEYWORD}


def with_model_options(cfg: RunConfig, model_kwargs: dict | None = None) -> RunConfig:
    """``cfg`` with ``model.options`` as the network is built: the builder's defaults, then ``model_kwargs``
    (the keywords the network was built with; default ``cfg.model.options``), data keywords left out."""
    given = cfg.model.options if model_kwargs is None else model_kwargs
    options = {**model_defaults(cfg.model.arch), **{k: v for k, v in given.items() if k not in DATA_KEYWORDS}}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, options=options))


def stage_dict(cfg: RunConfig, stage: str) -> dict:
    """The part of ``cfg`` a stage reads, as ``config.yaml`` records it: :data:`STAGE_SECTIONS` and the top level."""
    if stage not in STAGE_SECTIONS:
        raise UserError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_SECTIONS)}")
    keep = STAGE_SECTIONS[stage]
    return {k: v for k, v in to_dict(cfg).items() if k not in SECTION_NAMES or k in keep}


def check_nested_options(where: str, name: str, fn, options, skip: tuple = ()) -> None:
    """The keys of ``options`` against the keyword arguments ``fn`` takes, in one line listing the valid ones.

    Args:
        where: the dotted key of the options (``model.options``), named in the message.
        name: what takes them (``unet``).
        skip: keywords that are not options (set from the data).

    Raises:
        ValueError: e.g. ``model.options: unknown option 'base_channel' for unet; valid options: base_channels, ...``.
    """
    import inspect

    if not isinstance(options, dict):
        raise UserError(f"{where} = {options!r} is not allowed: expected a mapping of option -> value")
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return  # the callee checks its own options
    valid = [p.name for p in params if p.name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in valid:
            raise UserError(f"{where}: unknown option {key!r} for {name}; valid options: {', '.join(valid)}")


def check_data_options(spec: str, options: dict) -> None:
    """A data set's reader options, named and typed, checked before anything is read.

    Raises:
        ValueError: an option the reader does not take (listing those it does), or a value of the wrong type.
    """
    import inspect

    from ..data.registry import DATASETS, check_options

    name = spec.partition(":")[0]
    fn = DATASETS.entry(name, given=spec).value
    check_nested_options("data.options", name, fn, options)
    params = inspect.signature(fn).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        check_options(name, {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}, options)


def dump_yaml(cfg, path: str | Path) -> None:
    with atomic_write(path) as f:
        f.write(yaml.safe_dump(to_dict(cfg) if is_dataclass(cfg) else cfg, sort_keys=False))


# What each field allows beyond its type: (low, high) bounds (None: open), or a tuple of choices.
PRECISIONS = tuple(FABRIC_PRECISIONS)  # sslseg.engine.precision, the one list
RANGES: dict[str, dict[str, Any]] = {
    "RunConfig": {"seed": (0, None), "devices": (1, None), "precision": PRECISIONS},
    "DataConfig": {"image_size": (16, 8192), "val_fraction": (0.0, 0.95), "test_fraction": (0.0, 0.95),
                   "split_seed": (0, None)},
    "PretrainConfig": {"steps": (1, None), "epochs": (1, None), "batch_size": (1, None), "lr": ("(0", None),
                       "weight_decay": (0.0, None), "warmup_steps": (0, None)},
    "FinetuneConfig": {"steps": (1, None), "epochs": (1, None), "batch_size": (1, None), "lr": ("(0", None),
                       "weight_decay": (0.0, None), "warmup_steps": (0, None), "augment": (0.0, None),
                       "val_every": (0, None), "encoder_lr_ratio": (0.0, None),
                       "freeze_encoder_steps": (0, None), "freeze_encoder_epochs": (0, None),
                       "freeze_encoder_fraction": (0.0, 1.0)},
}


def rule_of(path: str) -> Any:
    """What :data:`RANGES` allows for the :class:`RunConfig` field at dotted ``path`` (None: its type only)."""
    *sections, name = path.split(".")
    node: Any = RunConfig()
    for section in sections:
        node = getattr(node, section)
    return RANGES.get(type(node).__name__, {}).get(name)


def _type_names(hint) -> list:
    """``int | None`` -> [int, None]; ``list`` -> [list]."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return [None if a is type(None) else a for a in typing.get_args(hint)]
    return [typing.get_origin(hint) or hint]


def _coerce(value, allowed: list):
    """``value`` as one of the ``allowed`` types, or raise TypeError; YAML's ``1e-3`` (a string) is a float."""
    if value is None and None in allowed:
        return value
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                break
            return float(value)
        if t is float and isinstance(value, str):
            try:
                v = float(value)
            except ValueError:
                continue
            if math.isfinite(v):
                return v
        if t is str and isinstance(value, str):
            return value
        if t is str and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # labels: 4
        if t in (dict, list) and isinstance(value, t):
            return value
    raise TypeError


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "a mapping", list: "a list", None: "null"}


def _describe(allowed: list, rule) -> str:
    base = " or ".join(_TYPE_WORDS.get(t, getattr(t, "__name__", str(t))) for t in allowed)
    if isinstance(rule, tuple) and rule and isinstance(rule[0], str) and not rule[0].startswith("("):
        return f"one of {', '.join(rule)}"
    if isinstance(rule, tuple):
        lo, hi = rule
        parts = []
        if lo is not None:
            parts.append(f"> {lo[1:]}" if isinstance(lo, str) else f">= {lo}")
        if hi is not None:
            parts.append(f"<= {hi}")
        return f"{base} {' and '.join(parts)}"
    return base


def _in_range(value, rule) -> bool:
    if rule is None or value is None:
        return True
    if isinstance(rule[0], str) and not rule[0].startswith("("):
        return value in rule
    lo, hi = rule
    if isinstance(lo, str):
        if not value > float(lo[1:]):
            return False
    elif lo is not None and value < lo:
        return False
    return hi is None or value <= hi


def validate_config(cfg, where: str = "config", ranges: dict[str, dict[str, Any]] | None = None):
    """Check every field of a config tree against its type and allowed range, once, at the edge.

    Values are coerced where the meaning is plain (an integer where a number is
    expected; YAML's ``1e-3``, read as a string, as a float; a count of labels as text).

    Raises:
        ValueError: one line naming the key, the value and what is allowed.
    """
    ranges = RANGES if ranges is None else ranges
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        key = f"{where}.{f.name}" if where else f.name
        value = raw = getattr(cfg, f.name)
        if is_dataclass(value):
            validate_config(value, key, ranges)
            continue
        allowed = _type_names(hints[f.name])
        rule = ranges.get(type(cfg).__name__, {}).get(f.name)
        try:
            value = _coerce(value, allowed)
        except TypeError:
            raise UserError(f"{key} = {raw!r} is not allowed: expected {_describe(allowed, rule)}") from None
        if not _in_range(value, rule):
            raise UserError(f"{key} = {raw!r} is not allowed: expected {_describe(allowed, rule)}")
        setattr(cfg, f.name, value)
    return cfg
