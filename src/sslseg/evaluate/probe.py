"""A linear probe of encoder features: how much of the segmentation target do they carry?

Fine-tuning mixes two questions: what the pretrained encoder learned, and how
well a few labelled images and an optimiser get it out. The probe answers the
first alone. Each encoder stage's features are resized to one grid; a ridge
regression maps every pixel's features to the foreground mask of the training
frames (closed form, no training loop); thresholded at 0.5 it is scored by
Dice on other frames. Compare an encoder against a random one of the same
architecture: random convolutional features are already a strong baseline.

Beside it, :func:`effective_rank` of the pooled deepest-stage features counts
how many directions the encoder uses: a collapsed encoder (BYOL's failure mode)
maps every image to a few directions, a healthy one spreads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from torch import nn


@torch.no_grad()
def stage_features(encoder: nn.Module, images: torch.Tensor, grid: int, batch: int = 16) -> list[torch.Tensor]:
    """Per encoder stage, ``(N * grid * grid, C)`` pixel features, bilinear-resized to ``grid x grid``."""
    out: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch):
        for s, f in enumerate(encoder(images[i:i + batch])):
            f = F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
            if len(out) <= s:
                out.append([])
            out[s].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return [torch.cat(o) for o in out]


def ridge_fit_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                      ridge: float = 1e-2) -> torch.Tensor:
    """Ridge regression with an intercept on standardised features, fitted in closed form (float64).

    Minimises ``|A w - y|^2 + ridge * n * |w|^2`` over the ``n`` training rows
    (the intercept is penalised too, negligibly at this scale). Shapes:
    ``x_train (n, d)``, ``y_train (n, k)``, ``x_test (m, d)`` -> ``(m, k)``.
    """
    mu, sd = x_train.mean(0), x_train.std(0).clamp(min=1e-6)

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()

    a = design(x_train)
    gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype)
    w = torch.linalg.solve(gram, a.T @ y_train.double())
    return (design(x_test) @ w).to(x_test.dtype)


def probe_encoder(encoder: nn.Module, train_images: torch.Tensor, train_masks: torch.Tensor,
                  test_images: torch.Tensor, test_masks: torch.Tensor, grid: int = 56,
                  ridge: float = 1e-2) -> dict[str, float]:
    """Linear-probe Dice of each encoder stage and of all stages together.

    Args:
        encoder: returns a list of stage feature maps (``model.encoder``); run in eval mode.
        train_images, test_images: normalised ``(N, C, H, W)``.
        train_masks, test_masks: ``(N, H, W)`` label maps; every label > 0 is foreground.

    Returns:
        ``{"stage0": dice, ..., "all": dice}``: mean Dice over the test frames with
        foreground (frames without are left out, as in :mod:`sslseg.evaluate.metrics`).
    """
    was_training = encoder.training
    encoder.eval()
    try:
        f_train = stage_features(encoder, train_images, grid)
        f_test = stage_features(encoder, test_images, grid)
    finally:
        encoder.train(was_training)

    def on_grid(masks: torch.Tensor) -> torch.Tensor:
        return (F.interpolate(masks[:, None].float(), size=(grid, grid), mode="nearest")[:, 0] > 0).float()

    y_train, y_test = on_grid(train_masks), on_grid(test_masks)
    pairs = {f"stage{s}": (a, b) for s, (a, b) in enumerate(zip(f_train, f_test, strict=True))}
    pairs["all"] = (torch.cat(f_train, 1), torch.cat(f_test, 1))
    scores = {}
    for name, (a, b) in pairs.items():
        pred = (ridge_fit_predict(a, y_train.reshape(-1, 1), b, ridge) > 0.5).float().reshape(y_test.shape)
        dice = compute_dice(pred[:, None], y_test[:, None], include_background=True, ignore_empty=True)
        scores[name] = float(torch.nanmean(dice))
    return scores


@torch.no_grad()
def pooled_features(encoder: nn.Module, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The deepest stage's features, averaged over space: ``(N, C, H, W)`` images -> ``(N, C_deepest)``.

    Runs the encoder in eval mode (BatchNorm running statistics), as a downstream user would.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        return torch.cat([encoder(images[i:i + batch])[-1].mean(dim=(2, 3)) for i in range(0, len(images), batch)])
    finally:
        encoder.train(was_training)


def effective_rank(features: torch.Tensor, center: bool = True) -> float:
    """Effective rank of a feature matrix: exp of the entropy of its normalised singular values.

    "erank(A) = exp(H(p_1, ..., p_Q)), p_k = sigma_k / ||sigma||_1" (Roy & Vetterli,
    EUSIPCO 2007, https://infoscience.epfl.ch/record/110188). It is ``k`` for ``k``
    orthogonal directions of equal energy, and between 1 and ``min(N, D)`` otherwise;
    it does not change with the scale of the features.

    Args:
        features: ``(N, D)``, one row per image.
        center: subtract the mean row first, so that a common offset (the same
            vector added to every image's features) does not count as a direction.

    Returns:
        The effective rank, a float in ``[1, min(N, D)]`` (0.0 for an all-zero matrix).
    """
    x = features.detach().double()
    if center:
        x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]  # 0 log 0 = 0
    return float(torch.exp(-(p * p.log()).sum()))
