"""io.files.atomic_write: the one writer of sslseg's outputs, and nobody going around it."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sslseg
from sslseg.io.files import atomic_write, temporaries, writer_id


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_write(path) as f:
            f.write("new, half")
            raise RuntimeError("half way")
    assert path.read_text() == "old\n"
    assert temporaries(path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_written_whole_with_the_permissions_of_a_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin", "wb", sync=True) as f:
            f.write(b"\x00\x01")
        with atomic_write(tmp_path / "b.txt") as f:
            f.write("line\r\nline\n")  # no newline translation: the bytes as given
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == b"line\r\nline\n"
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_a_dead_writers_temporary_goes_with_the_next_write(tmp_path):
    path = tmp_path / "config.yaml"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = writer_id().rpartition("-")[0]
    left = tmp_path / f".config.yaml.{host}-{dead}.abc123.tmp"  # a writer killed mid-write
    alive = tmp_path / f".config.yaml.{host}-{os.getppid()}.def456.tmp"  # a writer still running
    left.write_bytes(b"")
    alive.write_bytes(b"")
    with atomic_write(path) as f:
        f.write("a: 1\n")
    assert not left.exists() and alive.exists()


def _renames(tree: ast.AST) -> list[int]:
    """Lines calling ``os.replace``/``os.rename`` or ``X.replace(one argument)``/``X.rename(...)`` on a path."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, recv = node.func.attr, node.func.value
            if name in ("replace", "rename") and isinstance(recv, ast.Name) and recv.id == "os":
                out.append(node.lineno)
            elif name in ("replace", "rename") and len(node.args) == 1 and not node.keywords and not (
                    isinstance(node.args[0], ast.Constant)):
                out.append(node.lineno)
    return out


def test_no_writer_goes_around_atomic_write():
    root = Path(sslseg.__file__).parent
    # set_aside renames a damaged snapshot out of the way: a move, not a write
    allowed = {"io/files.py", "engine/resume.py"}
    found = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if rel in allowed:
            continue
        found += [f"{rel}:{n}" for n in _renames(ast.parse(f.read_text()))]
    assert found == [], f"temporary-then-rename written by hand (use sslseg.io.files.atomic_write): {found}"
