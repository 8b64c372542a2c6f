"""Experiment configuration: dataclasses with the defaults, YAML in and out, ``--set`` overrides.

Only the CLI and ``experiments/`` read configuration; everything below takes
plain typed arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    spec: str = "synthetic-echo"
    image_size: int = 112
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    split_seed: int = 0
    options: dict = field(default_factory=dict)  # passed to the reader (e.g. num_cases)


@dataclass
class ModelConfig:
    arch: str = "unet"
    # keyword arguments of the architecture's builder; empty = its defaults (they differ per architecture)
    options: dict = field(default_factory=dict)


@dataclass
class PretrainConfig:
    method: str = "simclr"
    steps: int = 1000
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    options: dict = field(default_factory=dict)  # method keyword arguments (temperature, ...)


@dataclass
class FinetuneConfig:
    init: str = "random"  # "random" or a checkpoint path
    labels: str = "4"
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
    # 20% of the steps when starting from a pretrained encoder (linear-probe-then-fine-tune), 0 from random
    freeze_encoder_steps: int | None = None
    freeze_encoder_epochs: int | None = None  # the same in epochs of the labelled frames (overrides steps)
    freeze_encoder_fraction: float = 0.2
    # re-estimate a pretrained encoder's BatchNorm statistics on plain training frames (labelled or
    # not) before fine-tuning: pretext tasks normalised augmented views (AdaBN, Li et al. 2016)
    recalibrate_bn: bool = False
    # which pretrained parts to load (e.g. [encoder]); None = every part the pretext trained
    transfer_parts: list | None = None


@dataclass
class RunConfig:
    seed: int = 0
    devices: int = 1
    precision: str = "32-true"
    logger: str = "csv"  # csv (metrics.csv), or tensorboard as well (sslseg.engine.progress)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def to_dict(cfg) -> dict:
    return asdict(cfg)


def from_dict(cls, data: dict | None, where: str = "config"):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys by name."""
    data = dict(data or {})
    names = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        f = names[k]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            kwargs[k] = from_dict(type(default), v, f"{where}.{k}")
        else:
            kwargs[k] = v
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_set(cfg, assignments: list[str]):
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a dataclass tree."""
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value: Any = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        target = cfg
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if is_dataclass(target):
                if not hasattr(target, part):
                    raise ValueError(f"--set {key}: unknown key {'.'.join(parts[: i + 1])!r}")
                target = getattr(target, part)
            elif isinstance(target, dict):
                target = target.setdefault(part, {})
            else:
                raise ValueError(f"--set {key}: {'.'.join(parts[:i])!r} is not a section")
        last = parts[-1]
        if is_dataclass(target):
            if not hasattr(target, last):
                valid = ", ".join(f.name for f in fields(target))
                raise ValueError(f"--set {key}: unknown key {last!r}; valid keys here: {valid}")
            setattr(target, last, value)
        elif isinstance(target, dict):
            target[last] = value
    return cfg


def dump_yaml(cfg, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg) if is_dataclass(cfg) else cfg, sort_keys=False))
    tmp.replace(path)
