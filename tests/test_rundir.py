"""The run directory: its file names (an interface: older runs, users' scripts and the README name them),
its writer lock, and atomic writes that leave the old file or the new one, never a part."""

import errno
import fcntl
import os
import re

import pytest

from cissl import rundir
from cissl.errors import CisslError
from cissl.rundir import RunDir, atomic_write, atomic_write_json, atomic_write_text


def test_the_layout_names_the_documented_files(tmp_path):
    run = RunDir(tmp_path / "run")
    assert {name: getattr(run, name).relative_to(tmp_path / "run").as_posix() for name in (
        "config", "split", "metrics", "results", "checkpoints", "plots", "tensorboard", "unlabeled_distribution")} == {
        "config": "config.yaml", "split": "split.json", "metrics": "metrics.jsonl", "results": "results.json",
        "checkpoints": "checkpoints", "plots": "plots", "tensorboard": "tensorboard",
        "unlabeled_distribution": "unlabeled_distribution.json"}
    assert rundir.LOCK == ".lock"
    assert str(run) == str(tmp_path / "run") and repr(run) == f"RunDir({str(tmp_path / 'run')!r})"


def test_the_lock_holds_the_pid_refuses_a_second_writer_and_is_released(tmp_path):
    run = RunDir(tmp_path)
    message = (f"^run directory {re.escape(str(tmp_path))} is in use by another cissl process \\(pid {os.getpid()}\\); "
               f"wait for it to end or choose another --out$")
    with run.exclusive():
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(CisslError, match=message):  # flock locks an open file: a second open conflicts
            with RunDir(tmp_path).exclusive():
                pass
    with run.exclusive():  # released at the end
        pass


def test_a_lock_held_without_a_pid_is_named_without_one(tmp_path):
    (tmp_path / ".lock").write_text("")
    with open(tmp_path / ".lock", "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CisslError, match=f"^run directory {re.escape(str(tmp_path))} is in use by another cissl "
                                             f"process; wait for it to end"):
            with RunDir(tmp_path).exclusive():
                pass


def test_a_stale_pid_in_the_lock_file_is_replaced(tmp_path):
    (tmp_path / ".lock").write_text("123456789")
    with RunDir(tmp_path).exclusive():
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    assert atomic_write_json(target, {"x": [1, 2]}) == target
    assert target.read_text() == '{\n "x": [\n  1,\n  2\n ]\n}'
    atomic_write_json(target, {"y": 1}, indent=None)
    assert target.read_text() == '{"y": 1}'
    atomic_write_text(target, "é\n")
    assert target.read_bytes() == "é\n".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_raises_what_failed(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def half_then_fail(handle):
        handle.write(b"ne")
        raise ValueError("not a storage error")

    with pytest.raises(ValueError, match="not a storage error"):  # not a storage error: passes as it is
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("code", sorted(rundir.STORAGE_ERRNOS))
def test_a_storage_error_under_a_wrapper_is_one_line_naming_the_file(tmp_path, code):
    target = tmp_path / "ckpt.pt"
    target.write_text("old")

    def fail(handle):  # as torch.save reports it: a RuntimeError over the OSError
        try:
            raise OSError(code, os.strerror(code))
        except OSError as exc:
            raise RuntimeError("write failed") from exc

    with pytest.raises(CisslError, match=f"^cannot write {re.escape(str(target))}: {re.escape(os.strerror(code))}; "
                                         f"the previous version, if any, is intact$"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_other_os_errors_and_exception_cycles_pass_as_they_are():
    permission = PermissionError(errno.EACCES, "denied")
    assert rundir._os_error_in(permission) is None
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped  # a cycle ends the search
    assert rundir._os_error_in(looped) is None
    full = OSError(errno.ENOSPC, "full")
    wrapped = RuntimeError("c")
    wrapped.__context__ = full  # found through the context too, not only the cause
    assert rundir._os_error_in(wrapped) is full


def test_the_file_is_fsynced_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(rundir.os, "fsync", fsync)
    monkeypatch.setattr(rundir.os, "replace", replace)
    monkeypatch.setattr(rundir, "fsync_directory", lambda folder: events.append(f"fsync {folder.name}"))
    atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync file", "rename", f"fsync {tmp_path.name}"]


def test_a_path_that_cannot_be_a_file_is_one_line_and_leaves_nothing(tmp_path):
    """Writing to a folder's name, under a file, or into a missing folder: one line naming the path and the
    reason (no traceback, no temporary file); an OSError of the writer itself (a download, say) passes."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    for target, reason in ((tmp_path / "folder", "Is a directory"), (tmp_path / "file/out.csv", "Not a directory"),
                           (tmp_path / "missing/out.csv", "No such file or directory")):
        with pytest.raises(CisslError, match=f"^cannot write {re.escape(str(target))}: {reason}$"):
            atomic_write_text(target, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"] and not any((tmp_path / "folder").iterdir())
    assert (tmp_path / "file").read_text() == "mine"

    def download_fails(handle):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    with pytest.raises(ConnectionRefusedError):
        atomic_write(tmp_path / "data.bin", download_fails)


def test_ensure_folder_creates_parents_accepts_a_folder_and_names_a_file_in_the_way(tmp_path):
    assert rundir.ensure_folder(tmp_path / "a/b") == tmp_path / "a/b" and (tmp_path / "a/b").is_dir()
    assert rundir.ensure_folder(tmp_path / "a/b") == tmp_path / "a/b"  # already there
    (tmp_path / "file").write_text("mine")
    with pytest.raises(CisslError, match=f"^{re.escape(str(tmp_path / 'file'))} is a file, not a folder; choose a "
                                         f"folder$"):
        rundir.ensure_folder(tmp_path / "file")
    with pytest.raises(CisslError, match=f"^cannot create the folder {re.escape(str(tmp_path / 'file/sub'))}: Not a "
                                         f"directory$"):
        rundir.ensure_folder(tmp_path / "file/sub")
    assert (tmp_path / "file").read_text() == "mine"
