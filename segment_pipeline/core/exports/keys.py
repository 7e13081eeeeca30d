"""Object keys for exports, and the rules that keep user-supplied ids inside the export root.

A key is a ``/``-separated relative path (``daily/nosto_segments/2026-11-03.json``). Every key a
storage accepts goes through :func:`check_key`, and every user-supplied value that becomes part of
a key (a segment id) goes through :func:`encode_segment` first, which maps it to exactly one path
segment: percent-encoding of everything outside ``[A-Za-z0-9_-]`` plus ``.`` (so ``..`` becomes
``%2E%2E``, ``a/b`` becomes ``a%2Fb``, a space ``%20``, ``é`` ``%C3%A9``). The mapping is
injective (``%`` itself is encoded), so two segments never share a folder, and reversible with
``urllib.parse.unquote``.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

#: Longest encoded segment accepted (file systems cap one path segment at 255 bytes).
MAX_SEGMENT_BYTES = 200

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_%.\-]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,99}$")
_TAG_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


class UnsafeKeyError(ValueError):
    """A key or key part that could escape the export root (or is otherwise unusable)."""


def encode_segment(segment_id: str) -> str:
    """The one path segment that stands for ``segment_id`` in keys (see module docstring)."""
    if not isinstance(segment_id, str):
        raise UnsafeKeyError(f"segment_id must be a string, got {type(segment_id).__name__}")
    if segment_id == "" or segment_id.strip() == "":
        raise UnsafeKeyError(f"segment_id must not be empty or blank (got {segment_id!r})")
    if "\x00" in segment_id:
        raise UnsafeKeyError(f"segment_id {segment_id!r} contains a NUL character")
    encoded = urllib.parse.quote(segment_id, safe="").replace(".", "%2E").replace("~", "%7E")
    if len(encoded.encode()) > MAX_SEGMENT_BYTES:
        raise UnsafeKeyError(
            f"segment_id {segment_id[:40]!r}... is too long: {len(encoded)} bytes once encoded "
            f"(at most {MAX_SEGMENT_BYTES})"
        )
    return encoded


def decode_segment(encoded: str) -> str:
    return urllib.parse.unquote(encoded)


def check_identifier(identifier: str) -> str:
    """The daily feed's identifier is a JSON key and a folder name: keep it plain."""
    if not isinstance(identifier, str) or not _IDENTIFIER.match(identifier):
        raise ValueError(
            f"export identifier {identifier!r} is invalid: use 1-100 characters from letters, digits, "
            "'_' and '-', starting with a letter or '_' (e.g. 'nosto_segments')"
        )
    return identifier


def check_part(part: str) -> str:
    """One already-safe key segment (our own names and encoded ids), else :class:`UnsafeKeyError`."""
    if not isinstance(part, str) or not _SAFE_SEGMENT.match(part) or part in (".", ".."):
        raise UnsafeKeyError(f"unsafe key part {part!r}")
    return part


def join_key(*parts: str) -> str:
    return "/".join(check_part(p) for p in parts)


def check_key(key: str) -> str:
    """A relative key made only of safe parts; anything else raises :class:`UnsafeKeyError`."""
    if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/"):
        raise UnsafeKeyError(f"unsafe key {key!r}")
    for part in key.split("/"):
        check_part(part)
    return key


def tag_value(segment_id: str) -> str:
    """A Dagster-tag-safe value (``[A-Za-z0-9_.-]{1,63}``) standing for ``segment_id``.

    Plain ids (starting with a letter or digit) are used as they are; anything else (spaces, unicode, slashes, long ids) becomes
    ``sha-`` plus 40 hex characters of its SHA-256, so equal ids always share a value.
    """
    encode_segment(segment_id)  # same validation as keys
    if _TAG_VALUE.match(segment_id) and not segment_id.startswith("sha-"):
        return segment_id
    return "sha-" + hashlib.sha256(segment_id.encode()).hexdigest()[:40]
