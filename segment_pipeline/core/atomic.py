"""Atomic file publication: nobody ever sees half a file.

Every file a user or partner reads is first written under a temporary name in the *same
directory* (so the final rename never crosses a filesystem) and then moved into place with
``os.replace``, which is atomic on POSIX. A crash mid-write leaves only a ``.tmp-*`` file that no
reader looks at, and which the next write of the same target cleans up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


def temp_sibling(target: Path, suffix: str = "") -> Path:
    """A unique temporary path next to ``target`` (hidden, never matched by readers' globs)."""
    return target.parent / f"{TMP_PREFIX}{target.name}.{uuid.uuid4().hex}{suffix}"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto ``target``, on error delete it.

    Works for files and for directories (a directory target is replaced as a whole: the old one
    is moved aside first, then removed once the new one is in place).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        yield tmp
        if tmp.is_dir():
            _replace_dir(tmp, target)
        else:
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = temp_sibling(target, ".old")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))
