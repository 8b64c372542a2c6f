"""A run folder's ``.lock`` lives as long as its run: removed at the end, even by an error, never by a refused one."""

from __future__ import annotations

import os

import pytest

from sslseg.experiments import runfolder
from sslseg.experiments.runfolder import lock


def test_the_lock_file_goes_with_its_run_and_stays_with_its_owner(tmp_path):
    out = tmp_path / "run"
    with lock(out):
        assert (out / ".lock").read_text() == f"process {os.getpid()}"
        with pytest.raises(ValueError, match="is in use by process"), lock(out):
            pass
        assert (out / ".lock").is_file()  # the refused one left it
    assert not (out / ".lock").exists()
    with pytest.raises(RuntimeError), lock(out):
        raise RuntimeError("the run failed")
    assert not (out / ".lock").exists()
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_lock_file_removed_between_open_and_lock_is_not_owned(tmp_path, monkeypatch):
    """The previous owner removes the file as it ends, just after this process opened it: locking that
    removed file would own nothing (a third process creates a new one); the new file must be taken."""
    out = tmp_path / "run"
    out.mkdir()
    real = runfolder.fcntl.flock
    calls = []

    def flock(fd, op):
        if not calls:  # the first lock attempt: the owner ends (removes the file) just before it
            (out / ".lock").unlink()
        calls.append(op)
        return real(fd, op)

    monkeypatch.setattr(runfolder.fcntl, "flock", flock)
    (out / ".lock").write_text("process 1")
    with lock(out):
        monkeypatch.setattr(runfolder.fcntl, "flock", real)
        with pytest.raises(ValueError, match=f"is in use by process {os.getpid()}"), lock(out):
            pass
    assert not (out / ".lock").exists()


def test_a_busy_folder_is_told_at_once_and_a_check_never_turns_the_owner_away(tmp_path, monkeypatch):
    import fcntl

    from sslseg.experiments.runfolder import refuse_if_busy

    out = tmp_path / "run"
    refuse_if_busy(out)  # no folder: nothing to say, nothing created
    refuse_if_busy(None)
    assert not out.exists()
    with lock(out):
        with pytest.raises(ValueError, match=f"{out} is in use by process {os.getpid()}"):
            refuse_if_busy(out)
        with monkeypatch.context() as m:  # a second process of a multi-process run: its first holds the folder
            m.setenv("LOCAL_RANK", "1")
            refuse_if_busy(out)
    out.mkdir(exist_ok=True)
    (out / ".lock").write_text("process 1")  # left by a killed run: free
    refuse_if_busy(out)
    assert (out / ".lock").read_text() == "process 1"  # taken and changed nothing
    # a check holds the lock at the instant the owner tries: the owner tries again after a moment
    check = os.open(out / ".lock", os.O_RDONLY)
    fcntl.flock(check, fcntl.LOCK_SH)
    monkeypatch.setattr(runfolder.time, "sleep", lambda s: fcntl.flock(check, fcntl.LOCK_UN))  # the check ends
    try:
        with lock(out):
            assert (out / ".lock").read_text() == f"process {os.getpid()}"
    finally:
        os.close(check)
