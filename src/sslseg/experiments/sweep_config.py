"""A sweep's config: its schema (:class:`SweepConfig`), the older spellings it still reads, and the checks
that run before anything trains (:func:`validate`). Each run's own config is resolved here too
(:func:`run_config`), as the command line resolves its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from .config import (
    RANGES,
    DataConfig,
    ModelConfig,
    RunConfig,
    apply_set,
    from_dict,
    load_yaml,
    resolve_run_config,
    rule_of,
    to_dict,
    validate_config,
)


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


def mode_label(method: str, mode: str) -> str:
    """The name a run goes by in ``results.csv`` and the report: ``simclr``, ``simclr+unimatch``, ``none+bcp``."""
    return method if mode == "supervised" else f"{method}+{mode}"


def split_label(label: str) -> tuple[str, str]:
    """``simclr+unimatch`` -> (``simclr``, ``unimatch``); ``simclr`` -> (``simclr``, ``supervised``)."""
    method, _, mode = label.partition("+")
    return method, mode or "supervised"
