"""Move pretrained weights into a segmentation model and report what moved."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PARTS = ("encoder", "decoder", "head")


@dataclass
class TransferReport:
    """Per part (encoder, decoder, head): keys loaded, missing (left at init), unexpected (ignored)."""

    loaded: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for part in PARTS:
            n_l = len(self.loaded.get(part, []))
            n_m = len(self.missing.get(part, []))
            lines.append(f"{part}: {n_l} tensors loaded, {n_m} left at initialisation")
        if self.unexpected:
            lines.append(f"ignored {len(self.unexpected)} checkpoint tensors that the model does not have")
        return "; ".join(lines)

    @property
    def num_loaded(self) -> int:
        return sum(len(v) for v in self.loaded.values())


def transfer_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], parts: tuple[str, ...] = ("encoder", "decoder")
) -> TransferReport:
    """Copy tensors of ``parts`` whose names and shapes match into ``model``.

    The head is never transferred by default: it is task-specific (number of
    classes) and pretraining does not train it.

    Raises:
        ValueError: nothing matched (wrong architecture or a foreign checkpoint).
    """
    own = model.state_dict()
    report = TransferReport()
    new_state = {}
    for key, value in own.items():
        part = key.split(".", 1)[0]
        src = state_dict.get(key)
        if part in parts and src is not None and tuple(src.shape) == tuple(value.shape):
            new_state[key] = src
            report.loaded.setdefault(part, []).append(key)
        else:
            report.missing.setdefault(part, []).append(key)
    report.unexpected = [k for k in state_dict if k not in own]
    if not new_state:
        raise ValueError(
            "no pretrained weight matched this model (names or shapes differ); "
            "was the checkpoint made for the same --arch and model settings?"
        )
    model.load_state_dict(new_state, strict=False)
    return report
