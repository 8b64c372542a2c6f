"""Where a result was made: the command line, the git commit, Python, the device and the package versions.

Read by every layer that records or shows provenance (:mod:`sslseg.experiments.provenance` writes it into
each run folder, :mod:`sslseg.report.html` shows it when a folder has none), so it lives below both and
imports nothing from the package.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

PACKAGES = ("sslseg", "torch", "monai", "lightning", "numpy", "scipy", "matplotlib", "PyYAML", "nibabel",
            "SimpleITK", "pydicom", "av", "tqdm", "scikit-image", "tensorboard")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    return dict(_versions(tuple(names)))


@functools.lru_cache(maxsize=4)
def _versions(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    # read once per process: a sweep writes provenance.json for every run
    from importlib.metadata import PackageNotFoundError, version

    out: list[tuple[str, str | None]] = []
    for n in names:
        try:
            out.append((n, version(n)))
        except PackageNotFoundError:
            out.append((n, None))
    return tuple(out)


def git_commit(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git work tree holding ``path`` (default: this package's source).

    ``(None, None)`` outside a work tree (an installed wheel) or without git.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        if path is None:
            # this file must be tracked: a package installed into a venv inside some other repository
            # would otherwise report that repository's commit
            subprocess.run(["git", "-C", str(where), "ls-files", "--error-unmatch", Path(__file__).name],
                           capture_output=True, timeout=10, check=True)
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (commit or None), bool(status.strip())


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``sslseg ARGS`` for the console script, else the interpreter and its arguments."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name == "sslseg" or argv[0] == "-c" or argv[0].endswith(("__main__.py", "cli.py"))):
        # the console script, ``python -m sslseg``, or ``main()`` called from code: the CLI's arguments
        argv[0] = "sslseg"
    else:
        argv = [Path(sys.executable).name, *argv]
    return shlex.join(argv)


def environment(argv: list[str] | None = None) -> dict:
    """Command line, working folder, git commit, Python, platform, device and package versions."""
    import torch

    commit, dirty = git_commit()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "command": command_line(argv),
        "cwd": os.getcwd(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "packages": package_versions(),
    }
