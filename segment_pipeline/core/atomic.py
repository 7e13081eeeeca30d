"""Atomic, owner-only file publication, and the cleanup of what killed writers leave behind.

**Atomic.** Every file a user or partner reads is first written under a temporary name in the
*same directory* (so the final rename never crosses a filesystem) and then moved into place with
``os.replace``, which is atomic on POSIX. Readers never see half a file.

**Owner-only.** Files holding personal data are created ``0600`` and the folders we create
``0700``, whatever the process umask (modes are set with ``chmod``, not left to the umask):

* a file target is written *inside* a private temporary folder (``0700``) next to the target,
  set to ``0600`` and only then renamed onto the target, so there is no moment at which another
  user can open it, even while a writer that knows nothing of modes (DuckDB, Polars, zipfile,
  SQLite) creates it with the umask's mode;
* a folder we create (:func:`private_mkdir`) is ``0700`` before anything is put in it. Folders
  that already exist keep their mode (an administrator may have granted a group access).

**Temporary names.** A temporary entry is called
``.tmp-<target name>.<owner>.<nonce>[<suffix>]`` where ``<owner>`` is
``<host>-<pid>-<start>``: the first 8 hex digits of the SHA-256 of the host name and the pid
namespace (so containers never judge each other's pids), the writer's process id and its start
time (Linux ``/proc/<pid>/stat`` field 22, in clock ticks since boot; ``0`` where unavailable),
and ``<nonce>`` 16 random hex digits. Readers' globs never match hidden names.

**Cleanup.** A write killed with SIGKILL leaves its temporary entry behind. Such a leftover is
*abandoned*, and removed by :func:`sweep_temporaries`, when

* its owner ran on this host (and pid namespace) and that process is gone, or its pid now
  belongs to a process that started at another time (pid reuse): decided at once, whatever its
  age;
* otherwise (written on another host sharing the folder, or a name without an owner, e.g. from an
  older version) only when nothing in it was modified for :data:`TEMP_MAX_AGE_SECONDS` (24 h).

A temporary entry of a live writer is never removed. The next successful write of a target sweeps
that target's own leftovers; :func:`sweep_tree` sweeps a whole folder tree (the warehouse and the
export root are swept when the pipeline starts a run). An interrupted directory replacement
(``<target>`` moved aside as ``...old`` but the new one not yet in place) is rolled back by the
sweep instead of deleted, so the previous version is never lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"
FILE_MODE = 0o600
DIR_MODE = 0o700
#: A temporary entry whose owner cannot be checked (another host, no owner in its name) is removed
#: once nothing in it changed for this long: far longer than any single file write takes.
TEMP_MAX_AGE_SECONDS = 24 * 3600
OLD_SUFFIX = ".old"

_OWNER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)\.(?P<nonce>[0-9a-f]{16})")
_TEMP_NAME = re.compile(
    r"^\.tmp-(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)\.[0-9a-f]{16}(?P<suffix>.*)$"
)


# -- processes (Linux /proc; shared with the export locks) ---------------------------------------


def process_start(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, state letter) of ``pid`` from ``/proc/<pid>/stat``,
    or None when there is no such process (or no ``/proc``). Field numbers: proc(5)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) < 20:
        return None
    return fields[19], fields[0]  # field 22 (starttime) and field 3 (state)


def pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[...]``), None without ``/proc``."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _host_id() -> str:
    """The host name plus the pid namespace (containers sharing a host name or a volume do not
    see each other's processes, so they must not judge each other's pids)."""
    return hashlib.sha256(f"{socket.gethostname()}|{pid_namespace() or ''}".encode()).hexdigest()[:8]


_HOST = _host_id()
_owner_cache: tuple[int, str] | None = None
_HAS_PROC = Path("/proc/self/stat").exists()


# -- owners -------------------------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux): None if it is gone, 0 when
    its ``/proc`` entry exists but cannot be read."""
    started = process_start(pid)
    if started is None:
        return 0 if os.path.exists(f"/proc/{pid}") else None
    return int(started[0]) if started[0].isdigit() else 0


def owner_tag() -> str:
    """``<host>-<pid>-<start>`` of this process (see the module docstring)."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache is None or _owner_cache[0] != pid:  # recomputed after a fork
        _owner_cache = (pid, f"{_HOST}-{pid}-{_start_ticks(pid) or 0}")
    return _owner_cache[1]


def unique_tag() -> str:
    """``<owner>.<nonce>``: a name part unique to one write, from which its owner can be read."""
    return f"{owner_tag()}.{uuid.uuid4().hex[:16]}"


def owner_alive(name: str) -> bool | None:
    """Whether the writer named in ``name`` (see :func:`unique_tag`) still runs.

    True or False when it ran on this host (False also when its pid was reused by a process that
    started later), None when that cannot be known (another host, or no owner in the name).
    """
    matches = list(_OWNER.finditer(name))
    match = matches[-1] if matches else None
    if match is None or match["host"] != _HOST:
        return None
    pid, start = int(match["pid"]), int(match["start"])
    if pid == os.getpid():
        return start == int(owner_tag().rsplit("-", 1)[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    if not _HAS_PROC:
        return True  # the pid exists; without /proc its start time cannot be compared
    now_start = _start_ticks(pid)
    if now_start is None:
        return False
    return not (start and now_start and now_start != start)


def _newest_mtime(path: Path) -> float:
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return time.time()
    if path.is_dir() and not path.is_symlink():
        for dirpath, _dirs, files in os.walk(path):
            for entry in files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, entry)).st_mtime)
    return newest


def is_abandoned(path: Path, max_age: float = TEMP_MAX_AGE_SECONDS, now: float | None = None) -> bool:
    """Whether the temporary entry ``path`` belongs to no live writer (see the module docstring)."""
    alive = owner_alive(path.name)
    if alive is not None:
        return not alive
    return (now if now is not None else time.time()) - _newest_mtime(path) > max_age


# -- modes --------------------------------------------------------------------------------------


def private_mkdir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents as ``0700`` folders (existing ones are left as they are)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created concurrently: whoever created it set its mode
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered through the umask
    return path


def make_private(path: str | os.PathLike[str]) -> None:
    """``chmod`` a file to ``0600`` (a folder to ``0700``, with everything in it)."""
    path = Path(path)
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            os.chmod(dirpath, DIR_MODE)
            for entry in files:
                os.chmod(os.path.join(dirpath, entry), FILE_MODE)
    else:
        os.chmod(path, FILE_MODE)


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """``os.open`` creating the file ``0600`` (and fixing the mode of an existing one we own)."""
    fd = os.open(path, flags, FILE_MODE)
    with contextlib.suppress(PermissionError):
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    return fd


# -- temporary names and publication ------------------------------------------------------------


def temp_sibling(target: Path, suffix: str = "") -> Path:
    """A unique temporary path next to ``target`` (hidden, never matched by readers' globs)."""
    return target.parent / f"{TMP_PREFIX}{target.name}.{unique_tag()}{suffix}"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], directory: bool = False, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto ``target``, on error delete it.

    For a file target, the yielded path lies inside a private temporary folder next to the
    target; whatever creates it, it is set to ``0600`` before it is published. With
    ``directory=True`` the yielded path is an existing, empty ``0700`` folder that replaces the
    target folder as a whole (the old one is moved aside first, then removed once the new one is
    in place). The target's parent folders are created ``0700`` when missing. After a successful
    publication, leftovers of killed writes of the same target are removed
    (:func:`sweep_temporaries`; ``sweep=False`` skips that, for files of a folder that is itself
    still temporary).
    """
    target = Path(target)
    private_mkdir(target.parent)
    holder = temp_sibling(target)
    if directory:
        holder.mkdir(mode=DIR_MODE)
        os.chmod(holder, DIR_MODE)
        tmp = holder
    else:
        holder.mkdir(mode=DIR_MODE)
        os.chmod(holder, DIR_MODE)
        tmp = holder / target.name
    try:
        yield tmp
        if tmp.is_dir():
            make_private(tmp)
            _replace_dir(tmp, target)
        else:
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
    finally:
        _remove(holder)
    if sweep:
        sweep_temporaries(target.parent, target.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = temp_sibling(target, OLD_SUFFIX)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, sweep: bool = True) -> Path:
    with atomic_path(target, sweep=sweep) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str, sweep: bool = True) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"), sweep=sweep)


# -- sweeping -----------------------------------------------------------------------------------


def sweep_temporaries(
    folder: str | os.PathLike[str], name: str | None = None, max_age: float = TEMP_MAX_AGE_SECONDS
) -> list[Path]:
    """Remove abandoned temporary entries directly in ``folder`` (only those of target ``name`` if
    given); return what was removed. An abandoned ``...old`` folder of an interrupted directory
    replacement is moved back onto its target when the target is missing."""
    folder = Path(folder)
    prefix = TMP_PREFIX + (f"{name}." if name is not None else "")
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        if not is_abandoned(path, max_age, now):
            continue
        match = _TEMP_NAME.match(entry.name)
        if match and match["suffix"] == OLD_SUFFIX and not (folder / match["name"]).exists():
            with contextlib.suppress(OSError):
                os.replace(path, folder / match["name"])  # roll the interrupted replacement back
                continue
        _remove(path)
        removed.append(path)
    return removed


def sweep_tree(root: str | os.PathLike[str], max_age: float = TEMP_MAX_AGE_SECONDS) -> list[Path]:
    """:func:`sweep_temporaries` in ``root`` and every folder below it (temporary folders are not
    entered: they are removed whole or left alone)."""
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for dirpath, dirnames, _files in os.walk(root):
        removed.extend(sweep_temporaries(dirpath, max_age=max_age))
        dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
    return removed


def sweep_owned_files(folder: str | os.PathLike[str], max_age: float = TEMP_MAX_AGE_SECONDS) -> list[Path]:
    """Remove files in ``folder`` that are all scratch (e.g. ingestion's ``_staging/``) and whose
    writer is gone: names carry a :func:`unique_tag`; see :func:`is_abandoned`."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        if is_abandoned(path, max_age, now):
            _remove(path)
            removed.append(path)
    return removed
