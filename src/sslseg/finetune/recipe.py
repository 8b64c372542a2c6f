"""The fine-tuning recipe around a pretrained network: its architecture, the parts it hands over,
the encoder's freeze schedule and learning rate, and its BatchNorm statistics.

Each step is a plain function of the pretrained checkpoint (as :func:`sslseg.finetune.transfer.read_init`
returns it, or None for random initialisation) and typed settings.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from torch import nn

from ..data.batches import FramePool, Normalizer
from ..data.sample import Case
from ..errors import UserError
from .transfer import TransferReport, recalibrate_batchnorm, transfer_weights

log = logging.getLogger("sslseg")

#: model keywords the fine-tuning data decide (the head is never transferred), not the pretrained network
DATA_KEYWORDS = ("in_channels", "num_classes")
#: the parts pretraining can hand over (the head is task-specific)
TRANSFERABLE = ("encoder", "decoder")


def model_options(init: dict | None, arch: str, options: dict, source: str) -> dict:
    """The architecture options of the network to fine-tune: the pretrained network's, as a whole.

    ``options`` (the user's) may repeat a pretrained option but not contradict it:
    the weights only fit the architecture they were trained in.

    Raises:
        ValueError: another architecture, or an option that differs from the pretrained one (one line).
    """
    if init is None:
        return dict(options)
    if init["arch"] != arch:
        raise UserError(f"{source}: made for arch {init['arch']!r}, but --arch is {arch!r}")
    pretrained = {k: v for k, v in init["model_kwargs"].items() if k not in DATA_KEYWORDS}
    for key, value in options.items():
        if key in pretrained and pretrained[key] != value:
            raise UserError(f"{source}: pretrained with model option {key} = {pretrained[key]!r}, but "
                            f"model.options.{key} is {value!r}; leave it out or give the same value")
    return {**options, **pretrained}


def transfer_parts(init: dict, wanted: str | list | None, source: str) -> tuple[str, ...]:
    """The parts to load: ``wanted`` (one name or a list), or every part the pretext trained (None).

    Raises:
        ValueError: a part that is not transferable, or one the checkpoint did not pretrain.
    """
    trained = tuple(p for p in init.get("trained_parts", ["encoder"]) if p != "head")
    if wanted is None:
        return trained
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [p for p in wanted if p not in TRANSFERABLE]
    if unknown:
        raise UserError(f"finetune.transfer_parts: unknown part {unknown[0]!r}; choose from {', '.join(TRANSFERABLE)}")
    untrained = [p for p in wanted if p not in trained]
    if untrained:
        raise UserError(f"finetune.transfer_parts asks for {untrained[0]!r}, but {source} pretrained only "
                        f"{', '.join(trained)}")
    return tuple(wanted)


def load_pretrained(model: nn.Module, init: dict | None, wanted: str | list | None, source: str) -> TransferReport | None:
    """Copy the pretrained parts into ``model``; the report of what moved (None from random initialisation)."""
    if init is None:
        return None
    report = transfer_weights(model, init["state_dict"], transfer_parts(init, wanted, source))
    log.info("transfer from %s: %s", source, report.summary())
    return report


def encoder_loaded(report: TransferReport | None) -> bool:
    """Whether pretrained weights reached the encoder."""
    return report is not None and bool(report.loaded.get("encoder"))


def recalibrate_encoder(model: nn.Module, train: list[Case], image_size: int, normalizer: Normalizer,
                        seed: int, batch: int = 32, max_batches: int = 32) -> None:
    """Re-estimate the encoder's BatchNorm statistics on plain frames of the training cases (AdaBN).

    Every frame, labelled or not, as pretraining saw it, but without the pretext's augmentation.
    """
    pool = FramePool(train, image_size, normalizer)
    rng = np.random.default_rng([seed, 1])
    n_batches = min(max_batches, -(-len(pool) // batch))
    n = recalibrate_batchnorm(model.encoder, (pool.batch(batch, rng) for _ in range(n_batches)))
    log.info("re-estimated %d encoder BatchNorm layers on %d frames drawn from %d training frames",
             n, batch * n_batches, len(pool))


#: the share of the fine-tuning steps a pretrained encoder stays frozen, unless told otherwise: half with one
#: labelled case, a fifth with more (measured on synthetic-echo: README, "Does it pay off?")
FREEZE_FRACTION = 0.2
FREEZE_FRACTION_ONE_CASE = 0.5


def freeze_steps(steps: int, pretrained_encoder: bool, fraction: float | None, given_steps: int | None = None,
                 given_epochs: int | None = None, epoch_steps: int = 1, labelled_cases: int | None = None) -> int:
    """For how many of the first ``steps`` the encoder stays frozen.

    A random encoder is never frozen, whatever is asked. For a pretrained one,
    ``given_epochs`` (epochs of the labelled frames, ``epoch_steps`` steps
    each) wins over ``given_steps``; with neither, it is frozen for ``fraction``
    of the steps. ``fraction``
    None: :data:`FREEZE_FRACTION_ONE_CASE` with one labelled case, else
    :data:`FREEZE_FRACTION`.

    A pretrained encoder under a randomly initialised decoder gets large, noisy
    gradients in the first steps, which wash out what pretraining learned with
    few labels. Training the decoder first on frozen features (LP-FT, Kumar et
    al., ICLR 2022) is meant to keep it. Measured on synthetic-echo at 64 px
    (README, "Does it pay off?"; an 800-step SimCLR encoder, 200 fine-tuning
    steps, 3 labelled subsets): frozen for 20% / 50% / 100% of the steps, the
    gain over random init was +0.020 / +0.058 / +0.050 Dice at 1 labelled video
    and +0.004 / -0.010 / -0.026 at 4. Freezing a poor encoder (BYOL at 400
    steps, 112 px) cost 0.11 Dice at 1 video (0.427 vs 0.535 unfrozen).
    """
    if not pretrained_encoder:
        # a random encoder has nothing to keep: freezing it would only weaken the random-init baseline
        # (and every gain measured against it)
        return 0
    if given_epochs is not None:
        if given_epochs < 0:
            raise UserError(f"finetune.freeze_encoder_epochs must be >= 0, got {given_epochs}")
        return min(steps, int(given_epochs) * max(1, epoch_steps))
    if given_steps is not None:
        return int(given_steps)
    if fraction is None:
        fraction = FREEZE_FRACTION_ONE_CASE if labelled_cases == 1 else FREEZE_FRACTION
    return int(round(fraction * steps)) if pretrained_encoder else 0


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """Optimiser steps in one pass over ``n_items`` (at least one)."""
    return max(1, math.ceil(n_items / batch_size))


def param_groups(model: nn.Module, task: nn.Module, lr: float, encoder_lr_ratio: float, pretrained: bool,
                 frozen_steps: int) -> list | None:
    """What the optimiser holds: None (the task's parameters, one learning rate) unless the recipe asks more.

    A pretrained encoder with ``encoder_lr_ratio != 1`` gets its own group at
    ``lr * encoder_lr_ratio``. With a freeze, every parameter is listed from the
    start: a frozen one has no gradient, so AdamW skips it until it thaws.
    """
    if pretrained and encoder_lr_ratio != 1.0:
        enc = list(model.encoder.parameters())
        enc_ids = {id(p) for p in enc}
        rest = [p for p in task.parameters() if id(p) not in enc_ids and p.requires_grad]
        return [{"params": enc, "lr": lr * encoder_lr_ratio}, {"params": rest}]
    if frozen_steps > 0:
        # every parameter the task trains (a mean teacher's never are)
        return [p for p in task.parameters() if p.requires_grad]
    return None
