"""Pictures through Pillow: a decompression bomb is an unreadable file, skipped and listed, not a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslseg.cli import main
from sslseg.io.pictures import read_picture


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 200-byte PNG whose header declares ``width x height`` 8-bit grey pixels (900 million by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 4)  # four rows; the rest is missing
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


def test_bomb_header_is_refused_before_decoding(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="bomb.png: not read, a possible decompression bomb"):
        read_picture(path)


def test_bomb_warning_range_is_refused_too(tmp_path, monkeypatch):
    # Pillow only warns between its limit and twice the limit, then decodes: refused here as well
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(path)
    assert read_picture(path).shape == (1, 12, 12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: above the limit, below twice it
    with pytest.raises(ValueError, match="big.png: not read, a possible decompression bomb"):
        read_picture(path)


def test_bomb_in_a_folder_is_skipped_and_listed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    for name in ("a", "b"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 9, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(root / "images" / "c.png")  # read, unlabelled
    bomb_png(root / "images" / "bomb.png")
    capsys.readouterr()
    assert main(["data", f"folder:{root}"]) == 0
    out = capsys.readouterr().out
    assert "cases: 3" in out
    assert "skipped: 1 item(s)" in out
    assert "bomb.png: not read, a possible decompression bomb" in out
    assert "1 image(s) in images/ have no mask (e.g. 'c'); used unlabelled" in out  # the bomb is not counted
