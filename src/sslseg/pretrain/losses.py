"""Pretraining losses as pure functions (no state, no modules)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


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
        # every rank computed a loss over every rank's rows; this rank's rows receive the sum of
        # those losses' gradients. DDP then averages over the W ranks, so W identical global losses
        # give exactly the gradient of one.
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
            rank's batch (see :func:`gather`): N is then the global batch.

    Returns:
        scalar loss. For N identical vectors the value is ``log(2N - 1)``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    # (2N, D) @ (D, 2N) -> (2N, 2N) cosine similarities / tau; the diagonal is masked
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    # anchor i's positive is i + N (and i + N's is i)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim.float(), target)


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
        raise ValueError(f"unknown global strategy {strategy!r}; choose one of {', '.join(GLOBAL_STRATEGIES)}")
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
        partition = gather(partition) if partition is not None else None
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.t() / temperature).float()  # (2N, 2N)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    other_view = torch.roll(eye, n, dims=1)  # (i, i + N mod 2N)
    if strategy == "GR" or partition is None:
        pos, neg = other_view, ~eye & ~other_view
    else:
        p2 = torch.cat([partition, partition]).to(z.device)
        same = (p2[:, None] == p2[None, :]) & ~eye
        neg = ~same & ~eye
        pos = other_view if strategy == "GD-" else same
    # log-sum-exp over each anchor's negatives; an anchor without negatives contributes 0
    lse_neg = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
    per_pair = -sim + torch.logaddexp(sim, lse_neg.expand_as(sim))
    return per_pair[pos].mean()


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
