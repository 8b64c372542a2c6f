"""Mask values: class indices everywhere; a 0/255 black-and-white mask read as 0/1, any other 255 refused;
predict's mask files hold indices and its mask video grey steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sslseg.cli import main
from sslseg.data.registry import load_dataset
from sslseg.predict.io import mask_display, read_mask_video


def folder(root, masks: dict[str, np.ndarray]):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, m in masks.items():
        Image.fromarray(np.full(m.shape, 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(m.astype(np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def square(value: int, background: int = 0) -> np.ndarray:
    m = np.full((16, 16), background, np.uint8)
    m[4:10, 5:12] = value
    return m


def test_a_black_and_white_png_mask_reads_as_its_0_1_twin(tmp_path):
    ones = load_dataset(f"folder:{folder(tmp_path / 'a', {'x': square(1)})}")
    white = load_dataset(f"folder:{folder(tmp_path / 'b', {'x': square(255)})}")
    np.testing.assert_array_equal(ones[0].masks[0], square(1))
    np.testing.assert_array_equal(white[0].masks[0], square(1))


def test_a_255_beside_another_class_is_refused_in_one_line(tmp_path, capsys):
    # a mask of 1 (background) and 255 (object): never silently read as 0/1
    root = folder(tmp_path / "c", {"x": square(255, background=1), "y": square(1)})
    with pytest.raises(ValueError, match=r"x\.png: mask value\(s\) \[255\] outside the classes 0\.\.1"):
        load_dataset(f"folder:{root}")
    assert main(["data", f"folder:{root}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.png: mask value(s) [255]" in err[0]


@pytest.mark.parametrize(("k", "grey"), [(2, [0, 255]), (3, [0, 127, 254]), (4, [0, 85, 170, 255])])
def test_the_mask_video_holds_grey_steps_and_reads_back_as_indices(tmp_path, k, grey):
    from fractions import Fraction

    from sslseg.io.video import write_video

    labels = np.stack([np.arange(k).repeat(4)[None].repeat(8, 0)] * 3)  # (3, 8, 4k): every class
    shown = mask_display(labels, k)
    assert sorted(np.unique(shown).tolist()) == grey
    path = write_video(shown, tmp_path / "m.avi", Fraction(25), lossless=True)
    np.testing.assert_array_equal(read_mask_video(path, k), labels)
