"""Pictures: PNG, JPEG, BMP, TIFF (multi-page: frames), through Pillow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import channel_error

#: Pillow modes that hold colour
_COLOUR_MODES = ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "PA")


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``(..., 3)`` RGB, in the input's integer range (``uint8`` stays ``uint8``, rounded)."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if rgb.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y.astype(np.float32)


def read_picture(path: Path, channels: int = 1) -> np.ndarray:
    """The pages of a picture: ``(N, H, W)`` grey, or ``(N, 3, H, W)`` RGB for ``channels=3``.

    Colour becomes BT.601 luma for one channel; grey stored as colour keeps its
    values (no rounding through luma).  A grey picture cannot become colour.

    Raises:
        ValueError: unreadable file, a header declaring more pixels than Pillow's
            decompression-bomb limit, pages of different sizes, or a channel count
            the picture cannot give (the message names the file).
    """
    from PIL import Image, ImageSequence, UnidentifiedImageError

    pages = []
    try:
        with warnings.catch_warnings():
            # a header declaring more pixels than Pillow's limit (Image.MAX_IMAGE_PIXELS, about 89 million)
            # is a decompression bomb: refused at open, before a byte is decoded, like any unreadable file
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            for page in ImageSequence.Iterator(im):
                if page.mode in _COLOUR_MODES:
                    a = np.asarray(page.convert("RGB"))
                    grey = np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
                    if channels == 3:
                        a = a.transpose(2, 0, 1)
                    elif channels == 1:
                        a = a[..., 0] if grey else luma(a)
                    else:
                        raise channel_error(path, 3, channels, f" ({page.mode})")
                else:
                    if channels != 1:
                        raise channel_error(path, 1, channels, f" ({page.mode})")
                    a = np.asarray(page)
                    if a.dtype == bool:
                        a = a.astype(np.uint8)
                pages.append(np.array(a))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"{path}: not read, a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise UserError(f"{path}: not a readable image ({err})") from None
    if len({p.shape for p in pages}) != 1:
        raise UserError(f"{path}: pages of different sizes")
    return np.stack(pages)


def write_pages(data: np.ndarray, out_base: Path, suffix: str, ext: str | None = None) -> Path:
    """Pages ``(N, H, W[, 3])`` to ``out_base + suffix``: one page -> PNG (or ``ext``), several -> multi-page TIFF.

    ``uint8`` pages are saved as 8-bit grey (or RGB for ``(H, W, 3)``), ``uint16``
    as 16-bit, ``float32`` as 32-bit float (TIFF only).
    """
    from PIL import Image

    if ext is None:
        ext = ".png" if data.shape[0] == 1 else ".tif"
    elif data.shape[0] > 1:
        ext = ".tif"
    path = Path(f"{out_base}{suffix}{ext}")
    pages = [Image.fromarray(np.ascontiguousarray(p)) for p in data]
    if len(pages) == 1:
        pages[0].save(path)
    else:
        pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def write_png_sequence(frames: np.ndarray, folder: Path) -> Path:
    """Frames ``(N, H, W)`` as ``folder/0000.png``, ``0001.png``, ... (at least four digits)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(frames.shape[0] - 1)))
    for i, m in enumerate(frames):
        Image.fromarray(np.ascontiguousarray(m)).save(folder / f"{i:0{width}d}.png")
    return folder
