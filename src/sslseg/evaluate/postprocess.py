"""Post-processing of predicted label maps through MONAI: largest connected component, hole filling.

The two clean-ups nnU-Net and MONAI users expect: keep only the largest
connected component of each foreground class (removes specks, e.g. along an
echo sector's edge) and fill holes enclosed by one class. Both are MONAI's
transforms (:class:`monai.transforms.KeepLargestConnectedComponent`,
:class:`monai.transforms.FillHoles`); this module only applies them to integer
label maps with any leading dimensions.

Measured on synthetic-echo (README, "Post-processing"): off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import UserError

STEPS = ("largest_component", "fill_holes")


def postprocess(
    labels: np.ndarray | torch.Tensor,
    num_classes: int,
    largest_component: bool = True,
    fill_holes: bool = True,
    connectivity: int | None = None,
) -> np.ndarray | torch.Tensor:
    """Clean integer label maps: largest connected component per class, then holes filled.

    Each 2D map is processed on its own: a frame or slice's components are its
    own, as the model predicted them frame by frame.

    Args:
        labels: integer label maps, 0 = background, classes ``1 .. num_classes - 1``.
        num_classes: number of classes including the background.
        largest_component: keep only the largest connected component of each foreground
            class (MONAI's ``KeepLargestConnectedComponent``, classes independent); the
            removed pixels become background.
        fill_holes: set background pixels enclosed by a single class to that class
            (MONAI's ``FillHoles``); holes touching the image border stay open.
        connectivity: neighbourhood hops (1 = 4-connected, 2 = 8-connected in 2D);
            None = full connectivity (8-connected), MONAI's default.

    Shape:
        labels: ``(..., H, W)``; the output has the same shape, dtype and type
        (numpy array or tensor, on the same device).

    Returns:
        The cleaned label maps (a new array; ``labels`` is left unchanged).

    Raises:
        ValueError: fewer than two dimensions, or ``num_classes`` < 2, or
            ``largest_component`` without scikit-image installed
            (``pip install 'sslseg[postprocess]'``).
    """
    from monai.transforms import FillHoles, KeepLargestConnectedComponent

    if labels.ndim < 2:
        raise UserError(f"postprocess expects label maps (..., H, W), got shape {tuple(labels.shape)}")
    if num_classes < 2:
        raise UserError(f"postprocess: num_classes must be at least 2 (background + one class), got {num_classes}")
    as_tensor = isinstance(labels, torch.Tensor)
    arr = labels.detach().cpu().numpy() if as_tensor else np.asarray(labels)
    if not (largest_component or fill_holes):
        out = arr.copy()
    else:
        classes = list(range(1, int(num_classes)))
        steps = []
        if largest_component:
            _need_skimage()
            steps.append(KeepLargestConnectedComponent(applied_labels=classes, is_onehot=False, independent=True,
                                                       connectivity=connectivity))
        if fill_holes:
            steps.append(FillHoles(applied_labels=classes, connectivity=connectivity))
        # (..., H, W) -> (N, 1, H, W): MONAI's transforms take one channel-first map at a time
        flat = arr.reshape(-1, 1, *arr.shape[-2:])
        out = np.empty_like(flat)
        for i in range(flat.shape[0]):
            m = flat[i].copy()  # MONAI's transforms write into their input
            if m.any():  # an empty map has nothing to clean
                for step in steps:
                    m = np.asarray(step(m))
            out[i] = m
        out = out.reshape(arr.shape)
    if as_tensor:
        return torch.as_tensor(out, device=labels.device)
    return out


def parse_steps(value: str | Sequence[str] | bool | None) -> dict[str, bool]:
    """Keyword arguments of :func:`postprocess` from a config or command-line value.

    Accepts ``none`` / ``False`` / ``None`` / ``[]`` (nothing), ``all`` / ``True``
    (both steps), a step name, a comma-separated string or a list of step names.

    Raises:
        ValueError: an unknown step name (the message lists the valid ones).
    """
    if value is None or value is False:
        names: list[str] = []
    elif value is True:
        names = list(STEPS)
    elif isinstance(value, str):
        names = [s.strip() for s in value.replace("+", ",").split(",") if s.strip()]
    else:
        names = [str(s) for s in value]
    if names in (["none"], ["None"]):
        names = []
    if names == ["all"]:
        names = list(STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise UserError(f"postprocess: unknown step {unknown[0]!r}; choose from none, all, {', '.join(STEPS)}")
    return {s: s in names for s in STEPS}


def _need_skimage() -> None:
    try:
        import skimage.measure  # noqa: F401  MONAI's connected-component labelling uses it
    except ImportError:
        raise UserError("largest-component post-processing needs scikit-image: "
                           "pip install 'sslseg[postprocess]'") from None
