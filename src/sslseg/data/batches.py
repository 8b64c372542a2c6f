"""From cases to normalised tensor batches, ready for batched augmentation.

Frames stay as stored (``uint8`` or ``float32``; memory-mapped for real data
sets) and are converted, resized and normalised one batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .sample import Case


@dataclass
class Normalizer:
    """``(x / scale - mean) / std`` with statistics from training frames.

    contrastive-echo (after echonet/dynamic) estimated mean and std from 128
    random training images; the same is done here and the values are stored in
    every checkpoint so that prediction uses exactly the training preprocessing.
    """

    mean: float
    std: float
    scale: float = 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.scale - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"mean": float(self.mean), "std": float(self.std), "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(float(d["mean"]), float(d["std"]), float(d.get("scale", 255.0)))

    @classmethod
    def fit(cls, cases: list[Case], num_frames: int = 128, seed: int = 0) -> Normalizer:
        """Estimate mean and std from up to ``num_frames`` random frames of ``cases``."""
        if not cases:
            raise ValueError("cannot estimate intensity statistics from zero cases")
        rng = np.random.default_rng(seed)
        index = [(ci, fi) for ci, c in enumerate(cases) for fi in range(c.num_frames)]
        pick = rng.choice(len(index), size=min(num_frames, len(index)), replace=False)
        scale = 255.0 if cases[0].frames.dtype == np.uint8 else 1.0
        vals = np.concatenate([cases[index[i][0]].frames[index[i][1]].ravel() for i in pick]).astype(np.float64)
        vals /= scale
        std = float(vals.std())
        return cls(float(vals.mean()), std if std > 1e-8 else 1.0, scale)


def frames_to_tensor(frames: np.ndarray, image_size: int | None) -> torch.Tensor:
    """``(N, H, W)`` or ``(N, C, H, W)`` array -> float32 ``(N, C, S, S)`` (bilinear resize)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if x.ndim == 3:
        x = x[:, None]
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


def masks_to_tensor(masks: np.ndarray, image_size: int | None) -> torch.Tensor:
    """``(N, H, W)`` integer masks -> int64 ``(N, S, S)`` (nearest resize)."""
    m = torch.from_numpy(np.ascontiguousarray(masks)).long()
    if image_size is not None and tuple(m.shape[-2:]) != (image_size, image_size):
        m = F.interpolate(m[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()
    return m


class FramePool:
    """Every frame of a list of cases, for self-supervised pretraining.

    ``batch(n, generator)`` draws ``n`` frames uniformly (with replacement) and
    returns them normalised, ``(n, C, S, S)``.
    """

    def __init__(self, cases: list[Case], image_size: int, normalizer: Normalizer) -> None:
        if not cases:
            raise ValueError("no case to pretrain on")
        self.cases = cases
        self.image_size = image_size
        self.normalizer = normalizer
        counts = np.array([c.num_frames for c in cases])
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.total = int(self.offsets[-1])

    def __len__(self) -> int:
        return self.total

    def batch(self, n: int, generator: np.random.Generator) -> torch.Tensor:
        flat = generator.integers(0, self.total, size=n)
        ci = np.searchsorted(self.offsets, flat, side="right") - 1
        imgs = [
            frames_to_tensor(self.cases[c].frames[f][None], self.image_size)
            for c, f in zip(ci, flat - self.offsets[ci], strict=True)
        ]
        return self.normalizer(torch.cat(imgs))


    def batch_with_meta(self, n: int, generator: np.random.Generator, n_parts: int = 4) -> dict:
        """Chaitanya et al.'s minibatch: ``m = n // n_parts`` cases, one random frame per partition.

        Each case is cut into ``n_parts`` equal partitions along its frame (slice or
        time) axis. Returns ``{"images": (m*n_parts, C, S, S), "partition": (m*n_parts,),
        "case": (m*n_parts,)}``.
        """
        m = max(1, n // n_parts)
        picks = generator.choice(len(self.cases), size=m, replace=m > len(self.cases))
        imgs, parts, owners = [], [], []
        for ci in picks:
            t = self.cases[ci].num_frames
            for k in range(n_parts):
                lo, hi = (k * t) // n_parts, max((k * t) // n_parts + 1, ((k + 1) * t) // n_parts)
                f = int(generator.integers(lo, min(hi, t)))
                imgs.append(frames_to_tensor(self.cases[ci].frames[f][None], self.image_size))
                parts.append(k)
                owners.append(int(ci))
        return {
            "images": self.normalizer(torch.cat(imgs)),
            "partition": torch.tensor(parts),
            "case": torch.tensor(owners),
        }


class LabelledSet:
    """The labelled frames of some cases, resized and normalised once, held in memory."""

    def __init__(self, cases: list[Case], image_size: int, normalizer: Normalizer) -> None:
        imgs, masks, self.keys = [], [], []
        for c in cases:
            for i in c.labelled_indices:
                imgs.append(frames_to_tensor(c.frames[i][None], image_size))
                masks.append(masks_to_tensor(c.masks[i][None], image_size))
                self.keys.append((c.case_id, i))
        if not imgs:
            raise ValueError("the selected cases have no labelled frame")
        self.images = normalizer(torch.cat(imgs))
        self.masks = torch.cat(masks)

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, n: int, generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(generator.integers(0, len(self), size=n))
        return self.images[idx], self.masks[idx]
