"""From cases to normalised tensor batches, ready for batched augmentation.

Frames stay as stored (``uint8`` or ``float32``; memory-mapped for real data
sets) and are converted, resized and normalised one batch at a time.

The batch of optimisation step ``s`` is a pure function of ``(seed, step)``:
:func:`step_generator` draws the *global* batch's indices, and rank ``r`` of
``W`` processes loads only its slice (:func:`shard`). So batches do not depend
on what ran before (a resumed run draws what an uninterrupted one would), the
ranks together see exactly the one-process batch, and a :class:`Prefetcher`
may build them ahead on another thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .sample import Case


def step_generator(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one step's draw: a pure function of ``(seed, stream, step)``."""
    return np.random.default_rng([int(stream), int(seed), int(step)])


def shard(n_global: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch of ``n_global`` items.

    Raises:
        ValueError: ``n_global`` is not a multiple of ``world_size``.
    """
    if n_global % world_size:
        raise UserError(f"--batch-size {n_global} (the global batch) must be a multiple of the "
                        f"{world_size} processes")
    n = n_global // world_size
    return slice(rank * n, (rank + 1) * n)


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
            raise UserError("cannot estimate intensity statistics from zero cases")
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
    return _to_float_batch(torch.from_numpy(np.ascontiguousarray(frames)), image_size)


def _to_float_batch(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Stored frames ``(N, H, W)`` or ``(N, C, H, W)``, on any device -> float32 ``(N, C, S, S)``.

    The one conversion of both data paths (host memory and device-resident), so that they agree.
    """
    x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


def load_frames(frames: list[np.ndarray], image_size: int | None) -> torch.Tensor:
    """Frames of any sizes -> float32 ``(N, C, S, S)``, resized one batch per input size.

    Equal, value for value, to :func:`frames_to_tensor` applied to each frame.
    """
    if not frames:
        raise UserError("no frame to load")
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(f.shape, []).append(i)
    if len(groups) == 1:
        return frames_to_tensor(np.stack(frames), image_size)
    out: torch.Tensor | None = None
    for idx in groups.values():
        x = frames_to_tensor(np.stack([frames[i] for i in idx]), image_size)
        if out is None:
            out = x.new_empty((len(frames), *x.shape[1:]))
        out[idx] = x
    return out


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

    ``exclude`` (case id -> frame indices) leaves frames out of the draw: the
    semi-supervised modes' pool is every training frame but the labelled frames
    of the selected cases (:func:`unlabelled_pool`).
    """

    def __init__(self, cases: list[Case], image_size: int, normalizer: Normalizer,
                 exclude: dict[str, set[int]] | None = None) -> None:
        if not cases:
            raise UserError("no case to pretrain on")
        self.cases = cases
        self.image_size = image_size
        self.normalizer = normalizer
        counts = np.array([c.num_frames for c in cases])
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.total = int(self.offsets[-1])
        self.allowed: np.ndarray | None = None
        if exclude:
            drop = [int(self.offsets[ci]) + int(f) for ci, c in enumerate(cases)
                    for f in exclude.get(c.case_id, ()) if 0 <= int(f) < c.num_frames]
            self.allowed = np.setdiff1d(np.arange(self.total), np.array(drop, dtype=np.int64))

    def __len__(self) -> int:
        return self.total if self.allowed is None else len(self.allowed)

    def indices(self, n: int, generator: np.random.Generator) -> np.ndarray:
        """``n`` flat frame indices drawn uniformly with replacement (among the allowed ones)."""
        if self.allowed is None:
            return generator.integers(0, self.total, size=n)
        return self.allowed[generator.integers(0, len(self.allowed), size=n)]

    def load(self, flat: np.ndarray) -> torch.Tensor:
        """The frames at flat indices, converted and resized as one batch, normalised: ``(n, C, S, S)``."""
        flat = np.asarray(flat)
        ci = np.searchsorted(self.offsets, flat, side="right") - 1
        frames = [self.cases[c].frames[f] for c, f in zip(ci, flat - self.offsets[ci], strict=True)]
        return self.normalizer(load_frames(frames, self.image_size))

    def batch(self, n: int, generator: np.random.Generator) -> torch.Tensor:
        return self.load(self.indices(n, generator))

    def meta_indices(self, n: int, generator: np.random.Generator, n_parts: int = 4) -> dict[str, np.ndarray]:
        """Chaitanya et al.'s minibatch: ``m = n // n_parts`` cases, one random frame per partition.

        Each case is cut into ``n_parts`` equal partitions along its frame (slice or
        time) axis. Returns the draw ``{"flat", "partition", "case"}``, each
        ``(m*n_parts,)``; :meth:`load_with_meta` loads it.
        """
        m = max(1, n // n_parts)
        picks = generator.choice(len(self.cases), size=m, replace=m > len(self.cases))
        flat, parts, owners = [], [], []
        for ci in picks:
            t = self.cases[ci].num_frames
            for k in range(n_parts):
                lo, hi = (k * t) // n_parts, max((k * t) // n_parts + 1, ((k + 1) * t) // n_parts)
                f = int(generator.integers(lo, min(hi, t)))
                flat.append(int(self.offsets[ci]) + f)
                parts.append(k)
                owners.append(int(ci))
        return {"flat": np.array(flat), "partition": np.array(parts), "case": np.array(owners)}

    def load_with_meta(self, draw: dict[str, np.ndarray]) -> dict:
        """``{"images": (m*n_parts, C, S, S), "partition": (m*n_parts,), "case": (m*n_parts,)}``."""
        return {
            "images": self.load(draw["flat"]),
            "partition": torch.as_tensor(draw["partition"]),
            "case": torch.as_tensor(draw["case"]),
        }


class ResidentFramePool:
    """A :class:`FramePool` whose frames live on the device, as stored (``uint8`` for video), one tensor per
    frame size; the batch of a step is cut, converted, resized and normalised there.

    The draws are the pool's own (:meth:`FramePool.indices`, :meth:`FramePool.meta_indices`: numpy, a pure
    function of ``(seed, step)``), and the conversion is the same code as the host path's
    (:func:`frames_to_tensor`), so for the same draw the batch equals ``pool.load``: bit for bit when
    no resize is needed (EchoNet-Dynamic is stored at 112x112) and on a CPU device; with a resize on a
    GPU, to the float rounding of its antialiased bilinear kernel (about 1e-6 of the value range).
    Resume stays exact because nothing here holds state: a step's batch is computed from the step.

    Augmentation is not this class's job: the methods and fine-tuning tasks already augment the batch
    on whatever device it is on (:mod:`sslseg.augment`). Whether the frames fit is decided by
    :func:`resident_fits`; use :func:`batch_source` to choose between this and the prefetching thread.

    EchoNet-Dynamic's training split (1,315,340 frames at 112x112) takes 16.5 GB as ``uint8``.
    """

    def __init__(self, pool: FramePool, device: torch.device | str) -> None:
        self.pool = pool
        self.device = torch.device(device)
        self.cases, self.image_size, self.normalizer = pool.cases, pool.image_size, pool.normalizer
        self.offsets, self.total, self.allowed = pool.offsets, pool.total, pool.allowed
        # one resident tensor per stored frame shape and dtype; each case's frames are one contiguous run
        keys = [(tuple(c.frames.shape[1:]), np.dtype(c.frames.dtype)) for c in pool.cases]
        self._groups = list(dict.fromkeys(keys))
        self._group_of_case = np.array([self._groups.index(k) for k in keys], dtype=np.int64)
        self._row_of_case = np.zeros(len(pool.cases), dtype=np.int64)
        counts = [0] * len(self._groups)
        for ci, c in enumerate(pool.cases):
            self._row_of_case[ci] = counts[self._group_of_case[ci]]
            counts[self._group_of_case[ci]] += c.num_frames
        self.frames: list[torch.Tensor] = [
            torch.empty((n, *shape), dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device=self.device)
            for (shape, dtype), n in zip(self._groups, counts, strict=True)]
        for ci, c in enumerate(pool.cases):
            g, r = int(self._group_of_case[ci]), int(self._row_of_case[ci])
            # a case at a time: the memory-mapped cache is read once, sequentially
            self.frames[g][r:r + c.num_frames].copy_(torch.from_numpy(np.ascontiguousarray(c.frames)))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.frames)

    def __len__(self) -> int:
        return len(self.pool)

    def indices(self, n: int, generator: np.random.Generator) -> np.ndarray:
        return self.pool.indices(n, generator)

    def meta_indices(self, n: int, generator: np.random.Generator, n_parts: int = 4) -> dict[str, np.ndarray]:
        return self.pool.meta_indices(n, generator, n_parts)

    def load(self, flat: np.ndarray) -> torch.Tensor:
        """The frames at flat indices, cut from the resident tensors and converted on the device: ``(n, C, S, S)``."""
        flat = np.asarray(flat)
        if flat.size == 0:
            raise UserError("no frame to load")
        ci = np.searchsorted(self.offsets, flat, side="right") - 1
        group = self._group_of_case[ci]
        rows = self._row_of_case[ci] + (flat - self.offsets[ci])
        out: torch.Tensor | None = None
        for g in np.unique(group):
            at = np.flatnonzero(group == g)
            # (k,) row indices to the device, then one gather of uint8 frames: (k, [C,] H, W)
            picked = self.frames[g][torch.from_numpy(rows[at]).to(self.device, non_blocking=True)]
            x = _to_float_batch(picked, self.image_size)
            if len(at) == len(flat):
                out = x
                break
            if out is None:
                out = x.new_empty((len(flat), *x.shape[1:]))
            out[torch.from_numpy(at).to(self.device)] = x
        return self.normalizer(out)

    def batch(self, n: int, generator: np.random.Generator) -> torch.Tensor:
        return self.load(self.indices(n, generator))

    def load_with_meta(self, draw: dict[str, np.ndarray]) -> dict:
        """As :meth:`FramePool.load_with_meta`, the images cut on the device (the indices stay on the host)."""
        return {
            "images": self.load(draw["flat"]),
            "partition": torch.as_tensor(draw["partition"]),
            "case": torch.as_tensor(draw["case"]),
        }


def frames_nbytes(pool: FramePool) -> int:
    """Bytes the pool's frames take as stored (what :class:`ResidentFramePool` would hold on the device)."""
    return int(sum(c.frames.size * np.dtype(c.frames.dtype).itemsize for c in pool.cases))


def resident_fits(nbytes: int, device: torch.device | str, reserve_fraction: float = 0.25,
                  min_reserve: int = 4 << 30) -> tuple[bool, str]:
    """Whether ``nbytes`` of frames fit on ``device`` beside training, from its measured free memory.

    Training keeps ``max(min_reserve, reserve_fraction * total memory)`` free for the model, its
    activations, the optimiser and the allocator's slack. Only CUDA devices are considered: on a CPU
    the frames already are in (memory-mapped) host memory, and the prefetching thread overlaps the
    batch's conversion with the step.

    Returns:
        ``(fits, why)``: the decision and one line saying what was measured.
    """
    device = torch.device(device)
    gib = 1 << 30
    if device.type != "cuda":
        return False, f"frames stay on the host ({device.type} device): batches are built by the prefetching thread"
    free, total = torch.cuda.mem_get_info(device)
    reserve = max(int(min_reserve), int(reserve_fraction * total))
    fits = nbytes + reserve <= free
    verdict = "resident on the device" if fits else "too large: batches are built on the host"
    return fits, (f"frames {nbytes / gib:.1f} GiB, device free {free / gib:.1f} of {total / gib:.1f} GiB, "
                  f"reserve {reserve / gib:.1f} GiB: {verdict}")


def batch_source(pool: FramePool, device: torch.device | str, resident: str = "auto"):
    """The pool to cut step batches from: a :class:`ResidentFramePool` when chosen, else ``pool`` itself.

    Args:
        pool: the host pool.
        device: the training device.
        resident: ``auto`` (resident when :func:`resident_fits` says so), ``on`` (always, e.g. a test
            on ``cpu``), ``off`` (never).

    Returns:
        ``(source, why)``: ``source`` has the pool's ``indices``/``meta_indices``/``load``/``load_with_meta``;
        call its ``load`` on the training thread when it is resident (no prefetching thread needed: the
        work is queued on the device), through :class:`Prefetcher` otherwise.
    """
    if resident not in ("auto", "on", "off"):
        raise UserError(f"resident frames = {resident!r} is not allowed: expected auto, on or off")
    if resident == "off":
        return pool, "frames stay on the host (resident frames off)"
    if resident == "on":
        return ResidentFramePool(pool, device), "frames resident on the device (asked for)"
    fits, why = resident_fits(frames_nbytes(pool), device)
    return (ResidentFramePool(pool, device) if fits else pool), why


def unlabelled_pool(train: list[Case], labelled_ids, image_size: int, normalizer: Normalizer) -> FramePool:
    """The semi-supervised modes' unlabelled frames: every frame of the training cases except the
    labelled frames of the selected cases (the masks of unselected cases are never read).

    Only ever built from the training split: validation and test frames stay unseen.
    """
    if any(c.split not in (None, "train") for c in train):
        raise UserError("the unlabelled pool takes training cases only")
    chosen = set(labelled_ids)
    exclude = {c.case_id: set(int(i) for i in c.labelled_indices) for c in train if c.case_id in chosen}
    return FramePool(train, image_size, normalizer, exclude=exclude)


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
            raise UserError("the selected cases have no labelled frame")
        self.images = normalizer(torch.cat(imgs))
        self.masks = torch.cat(masks)

    def __len__(self) -> int:
        return len(self.keys)

    def indices(self, n: int, generator: np.random.Generator) -> np.ndarray:
        return generator.integers(0, len(self), size=n)

    def take(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(np.asarray(idx))
        return self.images[idx], self.masks[idx]

    def batch(self, n: int, generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.take(self.indices(n, generator))


def images_and_partitions(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The images of a pretraining batch and, for a partitioned one, each image's partition index.

    ``batch`` is an image tensor ``(B, C, H, W)`` (``FramePool.load``) or the dict of
    :meth:`FramePool.load_with_meta`; a plain tensor has no partitions (None).
    """
    if isinstance(batch, dict):
        return batch["images"], batch.get("partition")
    return batch, None


def pin(batch: Any) -> Any:
    """Page-locked copies of a batch's tensors, so that copies to the GPU can run asynchronously."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: pin(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(pin(v) for v in batch)
    return batch


class Prefetcher:
    """Builds the batches of steps ``s, s+1, ...`` on a background thread, ``depth`` ahead of the step.

    ``make(step)`` must be a pure function of the step (see :func:`step_generator`):
    the thread runs ahead, and a call for another step than the next one (a
    resumed run) restarts it there. Reading memory-mapped frames, converting,
    resizing and normalising release the GIL, so they overlap the training step.
    With ``pin_memory`` the batches come page-locked, for ``non_blocking``
    copies to the GPU (Fabric's ``to_device`` uses them for CUDA).

    Args:
        make: ``step -> batch``.
        stop: one past the last step.
        depth: batches held ready.
        pin_memory: pin each batch (only useful with CUDA).

    Use as ``next_batch`` of :func:`sslseg.engine.loop.fit`; :meth:`close` (or ``with``) ends the thread.
    """

    def __init__(self, make: Callable[[int], Any], stop: int, depth: int = 3, pin_memory: bool = False) -> None:
        self.make, self.stop, self.depth, self.pin_memory = make, stop, max(1, depth), pin_memory
        self._next: int | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._halt = threading.Event()

    def _work(self, first: int, q: queue.Queue, halt: threading.Event) -> None:
        for step in range(first, self.stop):
            try:
                item = (step, self.make(step), None)
                if self.pin_memory:
                    item = (step, pin(item[1]), None)
            except BaseException as err:  # noqa: BLE001 - handed to the training thread, raised there
                item = (step, None, err)
            while not halt.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if halt.is_set() or item[2] is not None:
                return

    def _restart(self, step: int) -> None:
        self.close()
        self._halt = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._work, args=(step, self._queue, self._halt),
                                        name="sslseg-prefetch", daemon=True)
        self._thread.start()
        self._next = step

    def __call__(self, step: int) -> Any:
        if step >= self.stop:
            return self.make(step)
        if self._thread is None or step != self._next:
            self._restart(step)
        got, batch, err = self._queue.get()
        assert got == step, (got, step)
        if err is not None:
            self.close()
            raise err
        self._next = step + 1
        return batch

    def close(self) -> None:
        if self._thread is not None:
            self._halt.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
