"""Video files (PyAV): decoding to grey or RGB frames with their rate, and writing AVIs.

Grey is the luma plane: YUV videos keep their ``Y`` plane (no colour
conversion: echo is grey); limited-range ("MPEG") luma is expanded to 0..255
exactly as FFmpeg's YUV -> grey conversion does; other pixel formats go
through that conversion.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["decode_video", "read_video", "write_video"]

# ITU-R BT.601 limited ("MPEG") range to full range: what swscale's YUV -> grey does
_LIMITED_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)
_FULL_RANGE_FORMATS = ("yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "yuvj411p", "gray")


def _grey(frame) -> np.ndarray:
    fmt = frame.format.name
    if fmt.startswith(("yuv", "nv12", "nv21")) or fmt == "gray":
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
        full = fmt in _FULL_RANGE_FORMATS or int(getattr(frame, "color_range", 0) or 0) == 2
        return y.copy() if full else _LIMITED_TO_FULL[y]
    return frame.to_ndarray(format="gray")


def read_video(path: str | os.PathLike, rgb: bool = False) -> tuple[np.ndarray, Fraction | None]:
    """Every frame, ``uint8`` ``(T, H, W)`` grey (see the module notes) or ``(T, H, W, 3)`` RGB, and the frame rate.

    Raises:
        ValueError: the file cannot be opened or decoded, has no video, or
            decodes to fewer frames than its header announces (truncated).
    """
    import av

    path = Path(path)
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            expected = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24") if rgb else _grey(frame))
    except av.error.FFmpegError as err:  # InvalidDataError, EOFError, ... (some subclass ValueError)
        raise UserError(f"{path}: unreadable video ({type(err).__name__}: {err.strerror or err})") from None
    except UnicodeDecodeError as err:  # container metadata that is not text (a ValueError, but not ours)
        raise UserError(f"{path}: unreadable video (metadata is not text: {err.reason})") from None
    except ValueError:
        raise  # ours, already naming the file
    except (OSError, RuntimeError) as err:
        raise UserError(f"{path}: unreadable video ({type(err).__name__}: {err})") from None
    if not frames:
        raise UserError(f"{path}: no frame could be decoded")
    if expected and len(frames) < expected:
        raise UserError(f"{path}: truncated video: {len(frames)} of {expected} frames decoded")
    return np.stack(frames), (Fraction(rate) if rate else None)


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video as ``uint8`` ``(T, H, W)`` grey (luma) images (:func:`read_video`)."""
    return read_video(path)[0]


def write_video(frames: np.ndarray, path: Path, rate: Fraction, lossless: bool) -> Path:
    """``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB ``uint8`` frames to an AVI at ``rate`` frames/s.

    Lossless: the PNG codec (labels come back exactly); otherwise Motion JPEG
    at near-lossless quality (small, plays everywhere). Mask videos are written
    lossless with class ``c`` as grey ``c * (255 // (K - 1))``, 0/255 for two
    classes (:func:`sslseg.predict.io.mask_display`), not as class indices.
    """
    import av

    grey = frames.ndim == 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png" if lossless else "mjpeg", rate=rate)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = ("gray" if grey else "rgb24") if lossless else "yuvj444p"
        if not lossless:
            stream.codec_context.qmin, stream.codec_context.qmax = 2, 4  # near-lossless overlays
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray" if grey else "rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
