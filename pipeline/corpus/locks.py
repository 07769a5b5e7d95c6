"""One writer per output folder: an OS file lock inside the folder, released when its process dies.

In: an output folder (a corpus, a dataset, a model or a report folder). Out:
:func:`writer_lock`, a context manager that holds ``<folder>/.pairforge.lock`` with an
exclusive ``flock`` for as long as the write lasts, and :class:`FolderLockedError`,
raised at once (or, with ``wait=True``, after waiting) when another process holds
it; its message names the folder and the holder (pid, host, command, start time).

* **No stale locks.** The lock is the kernel's ``flock`` on the open file, not the
  file's existence: when the holder exits or is killed the kernel drops it, and the
  next writer takes it whatever the file says. The file holds a small JSON record of
  the current holder (``pid``, ``host``, ``command``, ``started``, ``folder`` and,
  in a flow, ``flow_run``), written after the lock is taken and emptied when it is
  released; a killed holder leaves its record behind, which only means nothing.
* **Nested folders.** A writer of ``corpus/nli-pairs-mined`` and a writer of
  ``corpus`` must not run together either. A writer therefore also takes a *shared*
  lock on the lock file of every folder above its own that has one (the folders
  pairforge writes), and the exclusive lock on its own; once it holds that, it looks
  again for lock files above that appeared meanwhile, and for writers inside its
  folder that started before its lock file existed. Two writers conflict when one's
  folder is the other's or lies inside it, and never otherwise; when a writer is
  refused because of a writer further down, the message names that one.
* **One process, one lock.** A folder already held by this process (or lying inside
  one it holds) is not locked again: the ``pairforge-pipeline`` flow holds its
  corpus while its ``build-corpus``, ``mine-negatives`` and ``write-config``
  subflows, which lock the same corpus when called on their own, run inside it.
  Tasks never lock: the entry point that runs them (a command, a flow) holds the
  folder for all of them, wherever they run.
* **The lock file is no content.** It is a hidden file: manifests, shards,
  ``data_config.json`` and :func:`flows.verify.corpus_digests` never count it, and
  a folder created only to be locked is removed again if the writer left nothing
  in it (a command that failed on a usage error leaves no trace).

Locks need a file system whose ``flock`` works between the processes (and hosts)
involved: local disks, NFSv4 (the Linux client maps ``flock`` to NFS locks) and
CephFS do.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

LOCK_NAME = ".pairforge.lock"
_READ_TRIES = 20
_READ_PAUSE_S = 0.02

# Folders this process holds (the lock's root) -> nesting depth.
_HELD: dict[Path, int] = {}
_HELD_GUARD = threading.Lock()


class FolderLockedError(RuntimeError):
    """Another process is writing the folder (or a folder above or inside it).

    Attributes:
        folder: the folder this writer asked for.
        held_folder: the folder whose lock the other writer holds (``folder``, or one above or inside it).
        holder: the other writer's record (``pid``, ``host``, ``command``, ``started``...); empty when unknown.
    """

    def __init__(self, folder: Path, held_folder: Path, holder: dict[str, Any]) -> None:
        self.folder = folder
        self.held_folder = held_folder
        self.holder = holder
        where = "" if held_folder == folder else f" (it holds {held_folder})"
        super().__init__(
            f"{folder} is being written by another process{where}: {describe_holder(holder)};"
            " rerun when it is done, or with --wait to wait for it"
        )


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2025-01-01T00:00:00Z, flow run x, command `pairforge ...```, in one line."""
    if not holder:
        return "holder unknown (its record is being written or unreadable)"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"]
    if holder.get("flow_run"):
        parts.append(f"flow run {holder['flow_run']}")
    command = " ".join(str(holder.get("command", "?")).split())
    parts.append(f"command `{command}`")
    return ", ".join(parts)


def read_holder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The holder record in ``folder``'s lock file ({} when there is none or it is empty).

    The record says who took the lock last; only :func:`is_locked` says whether
    someone holds it now.
    """
    path = Path(folder) / LOCK_NAME
    for attempt in range(_READ_TRIES):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return {}
        if text.strip():
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, dict):
                return value
        if attempt + 1 < _READ_TRIES:
            time.sleep(_READ_PAUSE_S)  # the holder may be writing its record right now
    return {}


def is_locked(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder``'s lock is held exclusively right now (by another process, or by this one)."""
    fd = _open_existing(Path(folder) / LOCK_NAME)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def default_command() -> str:
    """This process's command line: ``pairforge ingest ...``, ``python -m prefect.engine``, ``python -c ...``."""
    argv = list(sys.argv) or [""]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *argv[1:]])
    if argv[0] in ("", "-c"):
        return shlex.join(["python", *argv])
    return shlex.join([os.path.basename(argv[0]) or argv[0], *argv[1:]])


@contextlib.contextmanager
def writer_lock(
    folder: str | os.PathLike[str],
    wait: bool = False,
    command: str | None = None,
    flow_run: str | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold ``folder`` as its only writer for the duration of the ``with`` block.

    Creates the folder (and its parents) when missing. Yields the folder, resolved.

    Args:
        folder: the output folder.
        wait: wait for the current holder instead of failing.
        command: what to record as this writer's command (default: this process's command line).
        flow_run: the flow run holding the lock, for the record (flows pass theirs).
        on_wait: called once with a line naming the holder when ``wait`` has to wait.

    Raises:
        FolderLockedError: another process holds the folder, one above it or one inside it
            (only without ``wait``).
        ValueError: ``folder`` exists and is not a folder.
        RuntimeError: this process already holds a folder inside ``folder`` (a nesting
            the lock cannot express: lock the outer folder first).
    """
    root = Path(folder).resolve()
    with _HELD_GUARD:
        covering = next((held for held in _HELD if held == root or held in root.parents), None)
        if covering is not None:
            _HELD[covering] += 1
        else:
            inner = next((held for held in _HELD if root in held.parents), None)
            if inner is not None:
                raise RuntimeError(f"this process already holds {inner}, inside {root}: lock {root} first")
    if covering is not None:
        try:
            yield root
        finally:
            with _HELD_GUARD:
                _HELD[covering] -= 1
                if not _HELD[covering]:
                    del _HELD[covering]
        return

    created = _make_folder(root)
    fds: list[int] = []
    own: int | None = None
    try:
        # 1. the folders above that pairforge writes: shared, so that their writers wait for us
        shared = set()
        for ancestor in reversed(root.parents):
            fd = _lock_file(ancestor / LOCK_NAME, fcntl.LOCK_SH, create=False, wait=wait, root=root, on_wait=on_wait)
            if fd is not None:
                fds.append(fd)
                shared.add(ancestor)
        # 2. our own, exclusive
        own = _lock_file(root / LOCK_NAME, fcntl.LOCK_EX, create=True, wait=wait, root=root, on_wait=on_wait)
        assert own is not None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or default_command(),
            "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "folder": str(root),
        }
        if flow_run:
            record["flow_run"] = flow_run
        _write_record(own, record)  # who we are, for any writer we refuse from now on
        # 3. a folder above that became one of pairforge's while we locked ours, and
        # 4. a writer inside that started before our lock file existed: either would
        # otherwise run beside us (each of two racing writers sees the other in 3 or 4).
        for ancestor in reversed(root.parents):
            if ancestor not in shared:
                fd = _lock_file(ancestor / LOCK_NAME, fcntl.LOCK_SH, create=False, wait=wait, root=root, on_wait=on_wait)
                if fd is not None:
                    fds.append(fd)
        _wait_for_inner_writers(root, wait, on_wait)
    except BaseException:
        _release(own, fds, root, created)
        raise
    with _HELD_GUARD:
        _HELD[root] = 1
    try:
        yield root
    finally:
        with _HELD_GUARD:
            _HELD.pop(root, None)
        _release(own, fds, root, created)


def _make_folder(root: Path) -> list[Path]:
    """Create ``root`` and missing parents; the folders created, innermost first."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder: expected an output folder (or a path to create one)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed((root, *root.parents)) if p.exists() and not p.is_dir()), root)
        raise ValueError(f"{root}: {blocker} is a file, not a folder: expected an output folder") from None
    return missing


def _open_existing(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOTDIR):
            return None  # a folder above that this user cannot read: not one of its outputs
        raise


def _lock_file(
    path: Path, operation: int, create: bool, wait: bool, root: Path, on_wait: Callable[[str], None] | None
) -> int | None:
    """Open ``path`` and flock it; the descriptor (None when it does not exist and ``create`` is off).

    The file may be replaced between the open and the lock (a writer removing a folder
    it created and left empty): the lock is retried until it is on the file the path
    names.
    """
    while True:
        if create:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the writer we waited for removed the folder it had made
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
        else:
            fd = _open_existing(path)
            if fd is None:
                return None
        try:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                held_folder, holder = _holder_of(path.parent, exclusive=operation == fcntl.LOCK_EX)
                if not wait:
                    raise FolderLockedError(root, held_folder, holder) from None
                if on_wait is not None:
                    where = "" if held_folder == root else f" (it holds {held_folder})"
                    on_wait(f"{root} is being written by another process{where}: {describe_holder(holder)}; waiting for it")
                fcntl.flock(fd, operation)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def _holder_of(folder: Path, exclusive: bool) -> tuple[Path, dict[str, Any]]:
    """Who blocks a lock on ``folder``: its exclusive holder, or (for an exclusive lock
    refused by shared holders) a writer of a folder inside it."""
    if not exclusive or is_locked(folder):
        return folder, read_holder(folder)
    inner = _inner_writer(folder)
    return (inner, read_holder(inner)) if inner is not None else (folder, {})


def _inner_writer(folder: Path) -> Path | None:
    """A folder inside ``folder`` whose lock another process holds, or None.

    Hidden folders (staging, work folders) hold no lock files and are not searched.
    """
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        inner = Path(dirpath)
        if inner != folder and LOCK_NAME in filenames and is_locked(inner):
            return inner
    return None


def _wait_for_inner_writers(root: Path, wait: bool, on_wait: Callable[[str], None] | None) -> None:
    """Fail (or wait) while another process writes a folder inside ``root``."""
    while (inner := _inner_writer(root)) is not None:
        holder = read_holder(inner)
        if not wait:
            raise FolderLockedError(root, inner, holder)
        if on_wait is not None:
            on_wait(f"{root} is being written by another process (it holds {inner}): {describe_holder(holder)}; waiting for it")
        fd = _open_existing(inner / LOCK_NAME)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # until that writer is done
            finally:
                os.close(fd)


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _release(own: int | None, fds: list[int], root: Path, created: list[Path]) -> None:
    """Empty the record, remove folders this lock created if nothing else was written
    into them, and drop the locks (own first, then the folders above)."""
    if own is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(own, 0)
        if root in created:
            with contextlib.suppress(OSError):
                if os.listdir(root) == [LOCK_NAME]:
                    os.unlink(root / LOCK_NAME)
                    for folder in created:  # innermost first; stops at the first folder not empty
                        os.rmdir(folder)
        os.close(own)
    else:
        # refused before our lock: remove what we made if it is still empty
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                break
    for fd in reversed(fds):
        os.close(fd)
