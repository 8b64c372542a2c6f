"""Pretraining losses as pure functions (no state, no modules)."""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import UserError


class _Gather(torch.autograd.Function):
    """All ranks' tensors, stacked in rank order; gradients flow back to each rank's own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # half precisions go as float32: not every backend has them, and autocast may hand in bf16
        xf = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).contiguous()
        parts = [torch.empty_like(xf) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, xf)
        ctx.rows, ctx.rank, ctx.dtype = x.shape[0], dist.get_rank(), x.dtype
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # rank q's loss reaches this rank's rows through its gathered copy, so they receive the sum over q
        # of those gradients. Each rank's loss is its own share of the global loss (its anchors' rows,
        # see nt_xent_rows), so the sum is W times the global loss's gradient, and DDP's mean over the
        # W ranks gives exactly the gradient of one process over the global batch.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows].to(ctx.dtype)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process in rank order, with gradients; ``x`` itself on one process.

    Batch-contrastive losses compare each sample with every other sample of the
    *global* batch, as SimCLR does on TPUs and lightly's ``gather_distributed``
    does for DDP. Every rank must pass the same number of rows. Integer tensors
    (partition labels) are gathered without gradient.

    Shape: ``(n, ...)`` on each of W ranks -> ``(W * n, ...)``.

    Example::

        z1, z2 = gather(z1), gather(z2)   # (n, D) per rank -> (W n, D)
        loss = nt_xent(z1, z2)            # the same value on every rank
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _Gather.apply(x)


def check_temperature(temperature: float) -> float:
    """A contrastive temperature: a finite number > 0 (it divides the similarities).

    Raises:
        ValueError: one line naming the value.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not math.isfinite(temperature) or temperature <= 0:
        raise UserError(f"temperature = {temperature!r} is not allowed: expected a number > 0 (0.1 is usual)")
    return float(temperature)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
            gather_distributed: bool = False) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy (SimCLR's NT-Xent).

    "We randomly sample a minibatch of N examples and define the contrastive
    prediction task on pairs of augmented examples derived from the minibatch,
    resulting in 2N data points ... the other 2(N - 1) augmented examples within
    a minibatch [are treated] as negative examples." [0]  The loss is averaged
    over all 2N anchors, as in SimCLR.

    [0] Chen et al., SimCLR, ICML 2020, https://arxiv.org/abs/2002.05709

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views (row i pairs with z1 row i).
        temperature: tau; contrastive-echo used 0.1.
        gather_distributed: on several processes, take the negatives from every
            rank's batch (see :func:`gather`): N is then the global batch. Each rank
            computes only its own anchors' rows against every rank's keys
            (:func:`nt_xent_rows`); the value returned on every rank, and the
            gradients after DDP's averaging, are those of one process over the global batch.

    Returns:
        scalar loss. For N identical vectors the value is ``log(2N - 1)``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise UserError(f"nt_xent expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    rank, world = _rank_and_world(gather_distributed)
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    return _global_value(nt_xent_rows(z, _keys(z, world), rank, temperature), world)


def nt_xent_rows(z: torch.Tensor, keys: torch.Tensor, rank: int = 0, temperature: float = 0.1) -> torch.Tensor:
    """One rank's share of NT-Xent: its 2n anchors against the 2Wn keys of all W ranks.

    The (2Wn)^2 similarity matrix of the global batch is never built: each rank
    computes its (2n, 2Wn) block of rows. Anchor i of view 1 has its positive at
    column ``Wn + rank n + i`` (its view 2) and itself, masked, at ``rank n + i``.

    Args:
        z: ``(2n, D)`` this rank's normalised embeddings, ``[view 1; view 2]``.
        keys: ``(2Wn, D)`` every rank's, ``[view 1 of ranks 0..W-1; view 2 of ranks 0..W-1]``
            (on one process, ``z`` itself).
        rank: this rank's place among the W.

    Returns:
        the mean over these 2n anchors; the mean over the W ranks is NT-Xent of the global batch.
    """
    n, world = z.shape[0] // 2, keys.shape[0] // z.shape[0]
    own, positive = _columns(n, rank, world, z.device)
    # (2n, D) @ (D, 2Wn) -> cosine similarities / tau; each anchor's own column masked
    sim = z @ keys.t() / temperature
    sim = sim.masked_fill(own[:, None] == torch.arange(keys.shape[0], device=z.device), float("-inf"))
    return F.cross_entropy(sim.float(), positive)


def _rank_and_world(gather_distributed: bool) -> tuple[int, int]:
    if gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _keys(z: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's ``(2n, D)`` ``[view 1; view 2]``, gathered with gradients, as ``[all view 1; all view 2]``."""
    if world == 1:
        return z
    every = gather(z)  # (W 2n, D), rank by rank
    n, d = z.shape[0] // 2, z.shape[1]
    return every.view(world, 2, n, d).transpose(0, 1).reshape(2 * world * n, d)


def _columns(n: int, rank: int, world: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The key columns of this rank's 2n anchors themselves, and of their other views."""
    i = torch.arange(n, device=device) + rank * n
    return torch.cat([i, i + world * n]), torch.cat([i + world * n, i])


def _global_value(share: torch.Tensor, world: int) -> torch.Tensor:
    """``share`` with the value of its mean over the ranks (the global loss) and its own gradient."""
    if world == 1:
        return share
    total = share.detach().reshape(1).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return share - share.detach() + (total[0] / world).to(share.dtype)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)``, averaged over the batch.

    "we define the following mean squared error between the normalized predictions
    and target projections ... = 2 - 2 <q, z'> / (||q|| ||z'||)" [0]. 0 for
    identical directions, 4 for opposite ones. ``z`` is the target: pass it detached.

    [0] Grill et al., BYOL, NeurIPS 2020, https://arxiv.org/abs/2006.07733

    Shape: ``(N, D)`` and ``(N, D)`` -> scalar.
    """
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked (corrupted) pixels only.

    "The objective is to minimize the L1 reconstruction loss evaluated only at
    corrupted pixels to prevent the CNN from learning identity relationship"
    (Umapathy et al., ISMRM 2022 #3914, after Noise2Void).

    Shape: ``pred``, ``target`` ``(B, C, H, W)``; ``mask`` ``(B, 1, H, W)`` or
    ``(B, C, H, W)`` boolean, True where the input was corrupted.
    """
    m = mask.expand_as(pred).to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp(min=1)


GLOBAL_STRATEGIES = ("GR", "GD-", "GD")


def global_contrastive(
    z1: torch.Tensor,
    z2: torch.Tensor,
    partition: torch.Tensor | None = None,
    strategy: str = "GD",
    temperature: float = 0.1,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Global contrastive loss with partition-aware positives (Chaitanya et al., NeurIPS 2020).

    Each case is split into partitions along its slice (or time) axis. "G^{D-}:
    ... images from corresponding partitions of other volumes are not used as
    negatives"; "G^D: ... they are used as positives" [0]. For each anchor i
    and each positive p, ``-log(e^{s_ip} / (e^{s_ip} + sum_{n in N(i)} e^{s_in}))``
    with cosine similarities over ``temperature``, averaged over all (i, p).

    - ``GR``: positive = the other view; negatives = every other image (NT-Xent).
    - ``GD-``: positive = the other view; negatives = images of *other* partitions.
    - ``GD``: positives = every image of the same partition (both views);
      negatives = images of other partitions.

    [0] https://arxiv.org/abs/2006.10511

    Args:
        z1, z2: ``(N, D)`` projections of two views of the same N images.
        partition: ``(N,)`` partition index of each image (ignored for ``GR``).
        strategy: ``GR``, ``GD-`` or ``GD``.
        temperature: 0.1 in the reference code.
        gather_distributed: on several processes, use every rank's images (and
            partitions) as positives and negatives (see :func:`gather`).
    """
    if strategy not in GLOBAL_STRATEGIES:
        raise UserError(f"unknown global strategy {strategy!r}; choose one of {', '.join(GLOBAL_STRATEGIES)}")
    rank, world = _rank_and_world(gather_distributed)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    if strategy != "GR" and partition is not None and world > 1:
        partition = gather(partition)
    share = global_contrastive_rows(z, _keys(z, world), None if strategy == "GR" else partition, rank, strategy,
                                    temperature)
    return _global_value(share, world)


def global_contrastive_rows(z: torch.Tensor, keys: torch.Tensor, partition: torch.Tensor | None = None,
                            rank: int = 0, strategy: str = "GD", temperature: float = 0.1) -> torch.Tensor:
    """One rank's share of :func:`global_contrastive`: its 2n anchors' rows against the 2Wn keys.

    Args:
        z, keys, rank: as in :func:`nt_xent_rows`.
        partition: ``(Wn,)`` every rank's partitions in rank order (None: G^R).

    Returns:
        this rank's sum over its (anchor, positive) pairs times W over the number of
        pairs in the global batch, so that the mean over the W ranks is the mean over
        all pairs (ranks may hold different numbers of pairs under G^D).
    """
    two_m = keys.shape[0]
    n, world = z.shape[0] // 2, two_m // z.shape[0]
    own, other = _columns(n, rank, world, z.device)
    cols = torch.arange(two_m, device=z.device)
    itself, other_view = own[:, None] == cols, other[:, None] == cols  # (2n, 2Wn)
    sim = (z @ keys.t() / temperature).float()
    pairs: float | torch.Tensor = float(two_m)  # one positive per anchor
    if strategy == "GR" or partition is None:
        pos, neg = other_view, ~itself & ~other_view
    else:
        p2 = torch.cat([partition, partition]).to(z.device)
        same = (p2[own][:, None] == p2[None, :]) & ~itself
        neg = ~same & ~itself
        pos = other_view if strategy == "GD-" else same
        if strategy == "GD":
            # every anchor of the global batch has (images of its partition - 1) positives
            ordered = torch.sort(p2).values
            share = torch.searchsorted(ordered, p2, right=True) - torch.searchsorted(ordered, p2)
            pairs = (share - 1).sum().to(sim.dtype)
    # log-sum-exp over each anchor's negatives; an anchor without negatives contributes 0
    lse_neg = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
    per_pair = -sim + torch.logaddexp(sim, lse_neg.expand_as(sim))
    # a sum over the mask, not per_pair[pos]: indexing by a mask waits for the device
    return torch.where(pos, per_pair, 0.0).sum() * world / pairs


def local_contrastive(v1: torch.Tensor, v2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Local contrastive loss over regions of two views of the same images.

    "local regions ... at the same location in the two augmented views are
    positives ... other local regions ... negatives" (Chaitanya et al. 2020).
    For each image, anchor region r of one view has the same region of the other
    view as positive and the other ``2R - 2`` regions of both views as negatives:
    NT-Xent within each image, averaged over images (the reference code picks 5
    neighbouring regions as negatives; here every other region is one).

    Shape: ``v1``, ``v2`` ``(B, R, D)`` region embeddings -> scalar.
    """
    b, r, _ = v1.shape
    z = F.normalize(torch.cat([v1, v2], dim=1), dim=2)  # (B, 2R, D)
    sim = (z @ z.transpose(1, 2) / temperature).float()  # (B, 2R, 2R)
    eye = torch.eye(2 * r, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(r, 2 * r), torch.arange(0, r)]).to(z.device)
    return F.cross_entropy(sim.reshape(b * 2 * r, 2 * r), target.repeat(b))
