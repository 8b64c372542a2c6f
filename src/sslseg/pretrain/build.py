"""Pretraining method registry: ``build_method(name, model, **kwargs)``.

Every registered class builds a :class:`~sslseg.pretrain.contract.PretextTask`
(``cls(model, **options)``), the one interface its callers use: what it trains,
the batch it asks for (``partitions``: None for frames drawn uniformly across
the training cases, ``FramePool.batch``; a number of partitions per case for
Chaitanya et al.'s partitioned batch, ``FramePool.meta_indices``: G^D and
G^{D-}), its parameter groups, schedule restarts and ``after_step``. Adding a
method: a class that subclasses :class:`~sslseg.pretrain.contract.PretextBase`
(or defines every member of the contract), whose options are keyword arguments
with defaults, and one ``METHODS.add`` line below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .byol import BYOL
from .contract import PretextTask
from .global_local import GlobalContrastive, GlobalLocal, LocalContrastive
from .regression import MaskedRegression
from .regression_contrastive import RegressionContrastive
from .simclr import SimCLR

#: method name -> pretext task class ``(model, **options) -> PretextTask``
METHODS: Registry[Callable[..., PretextTask]] = Registry("pretraining method")
METHODS.add("simclr", SimCLR,
            "SimCLR: NT-Xent between two augmented views of each frame (encoder; Chen et al. 2020)")
METHODS.add("byol", BYOL,
            "BYOL: online network predicts an EMA target's projection of another view (encoder; Grill et al. 2020)")
METHODS.add("regression", MaskedRegression,
            "masked-noise regression: L1 on pixels replaced by Gaussian noise (encoder + decoder; Umapathy 2022)")
METHODS.add("global_contrastive", GlobalContrastive,
            "global contrastive on partitions of volumes (encoder; Chaitanya et al. 2020)")
METHODS.add("local_contrastive", LocalContrastive,
            "local contrastive on decoder feature-map regions, encoder frozen (Chaitanya et al. 2020)")
METHODS.add("global_local", GlobalLocal,
            "global contrastive (encoder), then local contrastive (decoder): the staged schedule")
METHODS.add("regression_contrastive", RegressionContrastive,
            "masked-noise regression and global contrastive together (beyond both papers)")


def build_method(name: str, model: nn.Module, **kwargs) -> PretextTask:
    """Wrap ``model`` in the named pretext task."""
    cls = METHODS.get(name)
    # the options were checked by method_options: a TypeError from the constructor is a bug, with its traceback
    return cls(model, **kwargs)


def method_options(name: str, options: dict | None) -> dict:
    """The keyword arguments of method ``name`` from a config's ``pretrain.options``.

    Rule: a key that names a method holds that method's own options
    (``{simclr: {temperature: 0.1}, byol: {momentum: 0.99}}``); any other key is
    shared by every method and must be accepted by each one it reaches, so a
    sweep over methods that differ gives such options per method. A method's own
    options override shared ones. An option the method does not take is an
    error that lists the ones it does.

    Raises:
        ValueError: an unknown method, a per-method entry that is not a mapping,
            or an option the method does not take.
    """
    cls = METHODS.get(name)
    options = dict(options or {})
    out = {k: v for k, v in options.items() if k not in METHODS}
    own = options.get(name) or {}
    if not isinstance(own, dict):
        raise UserError(f"pretrain.options.{name} must be a mapping of option -> value, got {own!r}")
    out.update(own)
    params = inspect.signature(cls).parameters
    accepted = [p for p in params if p not in ("self", "model", "augment")]
    for key in out:
        where = f"pretrain.options.{name}.{key}" if key in own else f"pretrain.options.{key}"
        if key not in accepted:
            raise UserError(f"{where}: method {name!r} takes no option {key!r} (it takes {', '.join(accepted)}); "
                            f"options for some methods only go under their name, e.g. {{simclr: {{{key}: ...}}}}")
        check_option(where, params[key], out[key])
    return out


#: what a method option allows beyond its type: (low, high, low is open); the same name means the same thing
#: in every method (a temperature divides similarities, a fraction is a share of pixels or steps)
OPTION_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "temperature": (0.0, None, True), "momentum": (0.0, 1.0, False), "predictor_lr_ratio": (0.0, None, True),
    "mask_fraction": (0.0, 1.0, True), "noise_std": (0.0, None, False), "mask_patch": (1, None, False),
    "n_parts": (1, None, False), "proj_dim": (1, None, False), "proj_hidden": (1, None, False),
    "num_blocks": (1, None, False), "num_regions": (1, None, False), "region_size": (1, None, False),
    "w_reg": (0.0, None, False), "w_con": (0.0, None, False), "global_fraction": (0.0, 1.0, True),
}


def check_option(where: str, param: inspect.Parameter, value) -> None:
    """One method option against its parameter's type (read from its default and annotation) and range.

    Raises:
        ValueError: one line, e.g. ``pretrain.options.temperature = 'abc' is not allowed: expected a number > 0``.
    """
    import math
    import numbers

    default, hint = param.default, str(param.annotation)
    optional = default is None or "None" in hint
    if value is None and optional:
        return
    lo, hi, open_low = OPTION_RANGES.get(param.name, (None, None, False))
    if isinstance(default, bool) or hint.startswith("bool"):
        if not isinstance(value, bool):
            raise UserError(f"{where} = {value!r} is not allowed: expected true or false")
        return
    if isinstance(default, str) or hint.startswith("str"):
        if not isinstance(value, str):
            raise UserError(f"{where} = {value!r} is not allowed: expected a name (text)")
        return
    integer = isinstance(default, int) or hint.startswith("int")
    number = integer or isinstance(default, float) or hint.startswith("float")
    if not number:
        return  # a structured option: the method checks it
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real) or \
            not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise UserError(f"{where} = {value!r} is not allowed: expected {kind}{_range_text(lo, hi, open_low)}")
    if (lo is not None and (value <= lo if open_low else value < lo)) or (hi is not None and value > hi):
        kind = "an integer" if integer else "a number"
        raise UserError(f"{where} = {value!r} is not allowed: expected {kind}{_range_text(lo, hi, open_low)}")


def _range_text(lo, hi, open_low: bool) -> str:
    if lo is None:
        return ""
    low = f"> {lo:g}" if open_low else f">= {lo:g}"
    return f" {low}" + (f" and <= {hi:g}" if hi is not None else "")


def frame_axis(cases) -> str | None:
    """What a case's frame index runs along: ``"slice"`` (volumes), ``"time"`` (cines), or None (unknown/mixed).

    Read from each case's ``Case.volume``, which the readers set.
    """
    flags = {c.volume for c in cases}
    if flags == {True}:
        return "slice"
    if flags == {False}:
        return "time"
    return None


def resolve_options(name: str, options: dict, axis: str | None) -> tuple[dict, str | None]:
    """Method ``name``'s options (:func:`method_options`) with the data-dependent defaults filled in.

    Returns (options, why) with why None when no default changed.

    Partition strategies: under G^D the same partition of another case is a
    positive, and under G^{D-} it is no negative. That rests on partition k
    showing the same anatomy in every case, true of slices through aligned
    volumes. Along the time axis of echo clips (1-2 beats, random phase),
    partition k of two videos shares nothing, and G^D has only one minimiser
    within reach: every embedding the same (loss ``log(1 + negatives)``). On
    synthetic-echo the G^D loss sat at log 37 = 3.611 from step 40 on (6 videos x 4
    partitions a batch). So cines get G^R unless a strategy is given.
    """
    out = method_options(name, options)
    params = inspect.signature(METHODS.get(name)).parameters
    if axis == "time" and "strategy" in params and "strategy" not in out:
        out["strategy"] = "GR"
        if params["strategy"].default != "GR":
            return out, ("frames run along time, where partition k of two videos shows no common anatomy; "
                         "strategy GR instead of the volume default " + str(params["strategy"].default))
    return out, None
