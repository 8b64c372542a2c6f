"""One owner per run folder: a lock, the same configuration or an explicit overwrite, a finished run left alone.

``claim(out, config)`` is called by the command line before a training run
starts writing. It

- takes ``out/.lock`` (an OS file lock: released by the kernel when the owning
  process ends in any way, so a lock left by a killed run is never stale),
  refuses a second process with one line, and removes the file when the run
  ends, so a finished folder holds only its outputs;
- compares the resolved configuration with the folder's ``config.yaml``: a
  different one is refused (``--overwrite`` clears the run's outputs first), and
  so are a damaged ``config.yaml`` and a ``checkpoint.pt`` without one (nothing
  is removed without ``--overwrite``);
- refuses a run that reads a file it would replace (``--init out/checkpoint.pt``);
- reports a finished run (``checkpoint.pt`` beside the same ``config.yaml``) so
  the caller can say so and stop without training again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from ..errors import UserError

try:  # POSIX; elsewhere a folder has no lock (the configuration checks still apply)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# what a training run writes; cleared together by --overwrite, so no old file outlives its run
RUN_OUTPUTS = ("checkpoint.pt", "last.pt", "last.pt.damaged", "metrics.csv", "labelled.json", "transfer.json",
               "splits.json", "config.yaml", "log.txt", "provenance.json")
#: folders a training run writes (TensorBoard's event files), cleared with the files
RUN_FOLDERS = ("tensorboard",)


class RunFolder:
    """The state of a claimed folder: ``finished`` when a whole run with this configuration is there."""

    def __init__(self, path: Path, finished: bool) -> None:
        self.path = path
        self.finished = finished


def first_difference(old, new, key: str = "") -> str | None:
    """The first dotted key whose value differs between two config dicts (None: the same)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(new) + [k for k in old if k not in new]:
            d = first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
            if d is not None:
                return d
        return None
    return None if old == new else key


def differences(old, new, key: str = "") -> list[str]:
    """Every dotted key whose value differs between two config dicts, in the new one's order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(new) + [k for k in old if k not in new]:
            out += differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
        return out
    return [] if old == new else [key]


def _comparable(cfg: dict) -> dict:
    """A resolved config as YAML writes and reads it back; the data-dependent method defaults left out."""
    out = yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False)) or {}
    return out


def _saved_config(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _loosen_resolved(saved: dict, new: dict) -> tuple[dict, dict]:
    """``(saved, new)`` as they are compared: what a run fills in, and the request leaves open, is no difference.

    - Pretraining records the method options it filled in from the data (e.g. ``strategy``);
      an option the new request leaves unset is not a difference.
    - Fine-tuning records the mode that ran where the request said auto (sslseg.finetune.modes).
    - ``model.options`` are compared with the architecture's defaults filled in on both sides (a
      ``config.yaml`` written before runs recorded them holds only those given); from a checkpoint, the
      network is the pretrained one, so only the options the request gives are compared.
    - ``data.resident`` (frames on the device or on the host) changes no batch.
    - Sections the request's stage does not record (a ``config.yaml`` written when every run recorded
      every section) are left out.
    """
    saved, new = dict(saved), dict(new)
    from .config import SECTION_NAMES

    for key in [k for k in saved if k in SECTION_NAMES and k not in new]:
        del saved[key]
    for side in (saved, new):  # where the frames live changes no batch (sslseg.data.batches.batch_source)
        if isinstance(side.get("data"), dict):
            side["data"] = {k: v for k, v in side["data"].items() if k != "resident"}
    old_pre, new_pre = saved.get("pretrain"), new.get("pretrain")
    if isinstance(old_pre, dict) and isinstance(new_pre, dict):
        old_opt, new_opt = old_pre.get("options"), new_pre.get("options")
        if isinstance(old_opt, dict) and isinstance(new_opt, dict):
            saved["pretrain"] = {**old_pre, "options": {k: v for k, v in old_opt.items() if k in new_opt}}
    old_ft, new_ft = saved.get("finetune"), new.get("finetune")
    if isinstance(old_ft, dict) and isinstance(new_ft, dict) and new_ft.get("mode") == "auto":
        saved["finetune"] = old_ft = {**old_ft, "mode": "auto"}
    if isinstance(old_ft, dict) and isinstance(new_ft, dict) and _same_file(old_ft.get("init"), new_ft.get("init")):
        saved["finetune"] = {**old_ft, "init": new_ft.get("init")}  # one checkpoint named two ways
    old_model, new_model = saved.get("model"), new.get("model")
    if isinstance(old_model, dict) and isinstance(new_model, dict):
        old_opt, new_opt = old_model.get("options"), new_model.get("options")
        if isinstance(old_opt, dict) and isinstance(new_opt, dict):
            if isinstance(new_ft, dict) and new_ft.get("init", "random") != "random":
                old_opt = {k: v for k, v in old_opt.items() if k in new_opt}
            else:
                defaults = _model_defaults(new_model.get("arch"))
                old_opt, new_opt = {**defaults, **old_opt}, {**defaults, **new_opt}
            saved["model"] = {**old_model, "options": old_opt}
            new["model"] = {**new_model, "options": new_opt}
    return saved, new


def _same_file(a, b) -> bool:
    if not isinstance(a, str) or not isinstance(b, str) or "random" in (a, b):
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def _model_defaults(arch) -> dict:
    from .config import model_defaults

    try:
        return model_defaults(str(arch))
    except ValueError:  # an unknown architecture: nothing to fill in
        return {}


def config_differences(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(dotted key, saved value, requested value)`` wherever a saved run config and a request differ."""
    saved, new = _loosen_resolved(saved, _comparable(new))
    return [(d, _get(saved, d), _get(new, d)) for d in differences(saved, new)]


def config_difference(saved: dict, new: dict) -> str | None:
    """Every dotted key where a saved run config and a request differ, with both values (None: the same run)."""
    diffs = config_differences(saved, new)
    return "; ".join(f"{d}: {old!r} there, {now!r} now" for d, old, now in diffs) or None


def read_config(path: Path) -> dict | None:
    """A run folder's ``config.yaml`` as a mapping (None: missing or unreadable)."""
    return _saved_config(path) if path.is_file() else None


def check_inputs(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse a run that reads one of the files it writes (and ``--overwrite`` clears) in ``out``.

    Args:
        inputs: flag -> the file it names (None: not given), e.g. ``{"--init": "runs/a/checkpoint.pt"}``.

    Raises:
        ValueError: one line naming the flag, the file and the folder.
    """
    out = Path(out)
    for flag, given in inputs.items():
        if given is None or not Path(given).is_file():
            continue
        path = Path(given)
        inside = path.name in RUN_OUTPUTS or (path.name.startswith(".") and path.name.endswith(".tmp"))
        if inside and path.parent.resolve() == out.resolve():
            raise UserError(f"{flag} {given} lies in --out {out}, whose {path.name} this run replaces; "
                            "choose another --out (or copy the file elsewhere first)")


def _saved_or_refuse(out: Path, overwrite: bool) -> dict | None:
    """The folder's ``config.yaml``; one that cannot be read is refused unless ``overwrite`` (None: none there)."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    saved = _saved_config(path)
    if saved is None and not overwrite:
        raise UserError(f"{path} is damaged (not a readable YAML mapping), so which run {out} holds cannot be told; "
                        "add --overwrite to replace that run or choose another --out")
    return saved


@contextlib.contextmanager
def claim(out: str | os.PathLike, config: dict, overwrite: bool = False,
          inputs: dict[str, str | os.PathLike | None] | None = None) -> Iterator[RunFolder]:
    """Own ``out`` for the duration of a run.

    Args:
        out: the run folder (created when missing).
        config: the fully resolved configuration of the requested run.
        overwrite: clear a previous run's outputs when its configuration differs.
        inputs: files the run reads, by flag (:func:`check_inputs`): refused when they are outputs of ``out``.

    Raises:
        ValueError: ``out`` is empty, a file, in use by another process, holds a run with another
            configuration or a damaged ``config.yaml``, or holds a file the run reads; nothing is removed then.
    """
    if not str(out).strip():
        raise UserError("--out is empty; give a folder")
    check_inputs(out, inputs or {})
    out = Path(out)
    with lock(out):
        saved = _saved_or_refuse(out, overwrite)
        finished = False
        if saved is not None:
            diff = config_difference(saved, config)
            if diff is not None and not overwrite:
                raise UserError(
                    f"{out} holds a run with a different configuration ({diff}); add --overwrite to replace it "
                    "or choose another --out")
            if diff is None:
                finished = (out / "checkpoint.pt").is_file() and not (out / "last.pt").is_file()
            else:
                clear_outputs(out)
        elif (out / "checkpoint.pt").exists() and not overwrite:
            raise UserError(f"{out} holds a checkpoint.pt but no config.yaml, so which run it is cannot be told; "
                            "add --overwrite to replace it or choose another --out")
        elif overwrite:
            clear_outputs(out)  # outputs without a readable config.yaml: nothing to resume from safely
        yield RunFolder(out, finished)


@contextlib.contextmanager
def lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out/.lock`` (created with ``out``) or refuse in one line when another process holds it.

    The file is removed when the holder ends (normally or by an exception), so a finished folder
    holds only its outputs; a killed process leaves it behind, unlocked, and the next run takes it.

    Raises:
        ValueError: ``out`` is a file, or another live process owns the folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    fd = _acquire(path, out)  # outside the try: a refused process must not remove the owner's file
    try:
        yield out
    finally:
        # removed while still held: a process that opened this file meanwhile finds it gone once it
        # gets the lock (_acquire), and takes a fresh one
        with contextlib.suppress(OSError):
            if fcntl is None or _is_file_of(fd, path):
                path.unlink()
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def refuse_if_busy(out: str | os.PathLike | None) -> None:
    """Refuse at once, in one line, when another live process holds ``out/.lock``; creates and takes nothing.

    The command line calls it first, before the training libraries load (seconds on a busy machine), so
    a second run on a folder in use is told at once; :func:`lock` takes the folder later. The check holds
    a shared lock for an instant; :func:`lock` tries again after :data:`PROBE_GRACE_S` before refusing,
    so a check never turns an owner away.

    Raises:
        ValueError: another process holds the folder.
    """
    if fcntl is None or out is None or not str(out).strip() or not launched_rank_zero():
        return  # a process of a multi-process run other than the first: the first holds the folder for all
    try:
        fd = os.open(Path(out) / ".lock", os.O_RDONLY)
    except OSError:
        return  # no lock file, or no folder: nobody holds it (claim() checks the rest)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise UserError(_in_use(out, fd)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def launched_rank_zero() -> bool:
    """Whether this is the first process of its run, told from the launchers' variables alone (no torch import):
    Fabric's launcher sets ``LOCAL_RANK`` and ``NODE_RANK``, torchrun also ``RANK``
    (:func:`sslseg.engine.distributed.is_rank_zero` before the process group exists)."""
    return all(int(os.environ.get(k, 0) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


#: seconds :func:`lock` waits before a second try: longer than any :func:`refuse_if_busy` check holds the lock
PROBE_GRACE_S = 0.05


def _in_use(out, fd: int) -> str:
    owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
    return f"{out} is in use by {owner}; wait for it to end or choose another --out"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _acquire(path: Path, out: Path) -> int:
    """An open descriptor of ``path`` with its exclusive lock (POSIX), the holder's pid written in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        if not _try_lock(fd):
            time.sleep(PROBE_GRACE_S)  # a refuse_if_busy check holds it for an instant, an owner for its run
            if not _try_lock(fd):
                message = _in_use(out, fd)
                os.close(fd)
                raise UserError(message)
        if _is_file_of(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
            return fd
        # the previous holder removed this file as it ended, after we opened it: open the new one
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _is_file_of(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed, not replaced)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def clear_outputs(out: Path) -> None:
    """Remove a previous run's outputs (and stray temporaries), so nothing old is taken for new."""
    for name in RUN_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
