"""Fine-tuning modes: supervised, or semi-supervised on the training split's unlabelled frames.

A mode is a task for the shared loop (:func:`sslseg.engine.loop.fit`) built as
``cls(model, loss, augment, **options)``, read by the pipeline only through its
contract (:class:`~sslseg.finetune.contract.FinetuneTask`): ``forward(batch)``
returns ``{"loss": ...}``; a semi-supervised mode declares ``needs_unlabelled =
True`` and its batch is then a dict ``{"images", "masks", "unlabelled", "step"}``
(the unlabelled frames drawn, like the labelled ones, as a pure function of
(seed, step), so resume stays exact and N processes see what one would), of
``unlabelled_batch`` frames; ``after_step(step, total)`` runs after each step
(BCP's teacher). It may take the run's ``steps``. It trains ``task.model``, the
network that is saved.

``auto`` (the default) is :data:`AUTO_MODE` with at most :data:`AUTO_MAX_CASES`
labelled cases where the training split holds unlabelled frames, else
``supervised``.
"""

from __future__ import annotations

import inspect
import math

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .bcp import BCP
from .contract import FinetuneTask
from .task import SupervisedTask
from .unimatch import UniMatch

MODES: Registry[type] = Registry("fine-tuning mode")
MODES.add("supervised", SupervisedTask, "the labelled frames only")
MODES.add("unimatch", UniMatch, "weak-to-strong consistency: confident pseudo-labels of a weak view train two "
                                "CutMix strong views and a feature-dropout branch (Yang et al., CVPR 2023)")
MODES.add("bcp", BCP, "bidirectional copy-paste between labelled and unlabelled frames, pseudo-labelled by an "
                      "EMA teacher after a labelled warm-up (Bai et al., CVPR 2023)")

AUTO = "auto"
#: what ``auto`` picks with few labelled cases and unlabelled frames beside them: the best mode on validation
#: Dice (studies/semi_supervised.py, 5 labelled subsets). Today that is supervised fine-tuning. On the demo's
#: echo data (200 steps) bcp was ahead with 1 labelled video, 0.722 / 0.822 from random / SimCLR init against
#: supervised 0.715 / 0.796 (unimatch 0.745 / 0.780), and behind with 4 (0.876 / 0.877 against 0.893 /
#: 0.896); on synthetic-mri's ISMRM protocol (300 steps) bcp was behind at N = 1, 0.360 / 0.387 from
#: random / regression init against 0.457 / 0.465, and at N = 2, 0.345 / 0.480 against 0.585 / 0.588.
#: A semi-supervised mode is a choice to make and measure (README, "Semi-supervised fine-tuning").
AUTO_MODE = "supervised"
#: the most labelled cases at which ``auto`` is :data:`AUTO_MODE` (beyond: supervised)
AUTO_MAX_CASES = 1

#: what each mode's options allow: (low, high) bounds, inclusive; "(x" excludes x
OPTION_RANGES = {
    "threshold": (0.0, 1.0), "fp_dropout": (0.0, "1)"), "cutmix_p": (0.0, 1.0), "unlabelled_batch": (1, None),
    "warmup_fraction": (0.0, "1)"), "ema_decay": (0.0, 1.0), "alpha": (0.0, None), "patch": ("(0", 1.0),
}
#: built by the pipeline, never an option
_GIVEN = ("self", "model", "loss", "augment", "steps")


def option_defaults(name: str) -> dict:
    """A mode's options and their defaults (the keyword arguments of its class beyond those the pipeline gives)."""
    sig = inspect.signature(MODES.get(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k not in _GIVEN}


def check_mode(name: str, options: dict | None = None) -> None:
    """The mode's name (or ``auto``) and its options: known names, numbers in range.

    Raises:
        ValueError: one line naming the option, its value and what is allowed.
    """
    MODES.check(name, also=(AUTO,), given=name)
    options = dict(options or {})
    if name == AUTO:
        if options:
            raise UserError(f"finetune.mode_options {sorted(options)} need a named mode (finetune.mode), not auto")
        return
    known = option_defaults(name)
    for key, value in options.items():
        if key not in known:
            raise UserError(f"finetune.mode_options: {name} has no option {key!r}; its options: "
                            f"{', '.join(known) or 'none'}")
        if key == "unlabelled_batch" and value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if key == "unlabelled_batch":
            ok = ok and isinstance(value, int)
        lo, hi = OPTION_RANGES.get(key, (None, None))
        if ok and lo is not None:
            ok = value > float(lo[1:]) if isinstance(lo, str) else value >= lo
        if ok and hi is not None:
            ok = value < float(hi[:-1]) if isinstance(hi, str) else value <= hi
        if not ok:
            shown_lo = f"> {lo[1:]}" if isinstance(lo, str) else f">= {lo}"
            shown_hi = f"< {hi[:-1]}" if isinstance(hi, str) else f"<= {hi}"
            bounds = " and ".join(b for b, v in ((shown_lo, lo), (shown_hi, hi)) if v is not None)
            raise UserError(f"finetune.mode_options.{key} = {value!r} is not allowed: expected a number {bounds}")


def resolve_mode(name: str, unlabelled_frames: int, labelled_cases: int = 1) -> str:
    """``auto`` -> :data:`AUTO_MODE` when there are unlabelled frames and at most :data:`AUTO_MAX_CASES`
    labelled cases, else ``supervised``; a named mode stays.

    Raises:
        ValueError: a semi-supervised mode asked for where the training split has no unlabelled frame.
    """
    if name == AUTO:
        return AUTO_MODE if unlabelled_frames > 0 and labelled_cases <= AUTO_MAX_CASES else "supervised"
    if needs_unlabelled(name) and unlabelled_frames == 0:
        raise UserError(f"finetune.mode {name} needs unlabelled frames, but every training frame is labelled "
                        "and selected; use finetune.mode=supervised or a smaller --labels")
    return name


def needs_unlabelled(name: str) -> bool:
    return bool(MODES.get(name).needs_unlabelled)


def build_task(name: str, model: nn.Module, loss: nn.Module, augment, steps: int, options: dict | None = None
               ) -> FinetuneTask:
    """The task of mode ``name`` (resolved: not ``auto``) around ``model``."""
    check_mode(name, options)
    cls = MODES.get(name)
    kwargs = dict(options or {})
    if "steps" in inspect.signature(cls.__init__).parameters:
        kwargs["steps"] = steps
    return cls(model, loss, augment, **kwargs)
