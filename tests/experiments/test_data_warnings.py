"""Issue 25 item 10: training names the files it dropped and refuses a data set with nothing to learn."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslseg.cli import main

TINY = ["--image-size", "16", "--steps", "1", "--batch-size", "2", "--labels", "1", "--mode", "supervised",
        "--set", "model.options.base_channels=4", "--set", "model.options.depth=2"]


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root: Path, foreground: bool) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for i in range(6):
        _png(root / "images" / f"c{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
        mask = ((yy - 8) ** 2 + (xx - 8) ** 2 < 16).astype(np.uint8) if foreground else np.zeros((16, 16), np.uint8)
        _png(root / "masks" / f"c{i}.png", mask)
    return root


def test_training_names_the_files_it_skipped(tmp_path, caplog):
    data = _folder(tmp_path / "data", foreground=True)
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    assert main(["finetune", "--data", f"folder:{data}", *TINY, "--out", str(tmp_path / "ft")]) == 0
    # a warning: the console shows it (cli.main lets warnings through to stderr)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("1 file(s) skipped, not trained on" in w and "broken.png" in w for w in warned)


def test_masks_that_are_all_background_are_refused(tmp_path, capsys):
    data = _folder(tmp_path / "data", foreground=False)
    assert main(["finetune", "--data", f"folder:{data}", *TINY, "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is background (0): nothing to learn" in err[0]
