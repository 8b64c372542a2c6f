"""Issue 25 item 11: a detached header (.mhd, .nhdr) reads voxels only from beside (or below) itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sslseg.cli import main
from sslseg.io.volumes import read_voxels

SECRET = np.arange(16, dtype=np.uint8).reshape(4, 4)


def mhd(path: Path, data_file: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\n"
                    f"ElementSpacing = 1 1\nElementDataFile = {data_file}\n")
    return path


def nhdr(path: Path, data_file: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\ndata file: {data_file}\n\n")
    return path


def secret(root: Path) -> Path:
    """Voxels outside the data folder (``root/outside/secret.raw``)."""
    p = root / "outside" / "secret.raw"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(SECRET.tobytes())
    return p


@pytest.mark.parametrize("write", [mhd, nhdr], ids=["mhd", "nhdr"])
@pytest.mark.parametrize("where", ["absolute", "dotdot", "dotdot inside a sub-folder"])
def test_voxel_file_outside_the_folder_is_refused(tmp_path, write, where):
    """Old code: the pixels of ``outside/secret.raw`` were read (and, in a data set, trained on)."""
    raw = secret(tmp_path)
    name = {"absolute": str(raw), "dotdot": "../../outside/secret.raw",
            "dotdot inside a sub-folder": "sub/../../../outside/secret.raw"}[where]
    header = write(tmp_path / "data" / "images" / ("a.mhd" if write is mhd else "a.nhdr"), name)
    with pytest.raises(ValueError, match="outside the header's folder") as err:
        read_voxels(header)
    assert str(header) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("write", [mhd, nhdr], ids=["mhd", "nhdr"])
def test_voxel_file_beside_or_below_the_header_is_read(tmp_path, write):
    for name in ("a.raw", "voxels/a.raw", "./voxels/../a.raw"):
        folder = tmp_path / name.replace("/", "_")
        target = folder / "images" / Path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.resolve().parent.mkdir(parents=True, exist_ok=True)
        target.resolve().write_bytes(SECRET.tobytes())
        header = write(folder / "images" / ("a.mhd" if write is mhd else "a.nhdr"), name)
        vox, _ = read_voxels(header)
        assert np.array_equal(np.asarray(vox).squeeze().T, SECRET)


def test_data_command_names_the_header(tmp_path, capsys):
    """``sslseg data folder:X`` with such a header: one line naming it, exit 2."""
    raw = secret(tmp_path)
    mhd(tmp_path / "data" / "images" / "a.mhd", str(raw))
    mhd(tmp_path / "data" / "masks" / "a.mhd", "../../outside/secret.raw")
    capsys.readouterr()
    code = main(["data", f"folder:{tmp_path / 'data'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "a.mhd" in err[0] and "outside" in err[0], err
