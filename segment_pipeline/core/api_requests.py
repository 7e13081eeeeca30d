"""Validation of what clients send to the segment API, and masking of what goes to the logs.

Plain functions, no HTTP: each raises :class:`RequestError` carrying the HTTP status and a message
that is safe to send back (it never echoes secrets; it may name the offending field).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL_IN_TEXT = re.compile(r"([^\s/@:?&=\"']+)@([^\s/@?&=\"']+)")


class RequestError(ValueError):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def parse_date(value: str | None, name: str = "date") -> dt.date | None:
    """``YYYY-MM-DD`` (strict) or None when absent; 400 otherwise."""
    if value is None or value == "":
        return None
    if not _DATE.match(value):
        raise RequestError(400, f"{name} must be a date as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RequestError(400, f"{name} must be a valid calendar date (YYYY-MM-DD)") from None


def parse_json_object(raw: bytes, max_bytes: int) -> dict:
    """A JSON object body of at most ``max_bytes``: 413 when larger, 400 when not a JSON object."""
    if len(raw) > max_bytes:
        raise RequestError(413, f"request body too large (limit {max_bytes} bytes)")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "request body must be UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    # Cc: C0/C1 controls (newline, CR, ESC, NUL, DEL ...); Cf: format characters (bidi overrides,
    # zero-width); Zl/Zp: U+2028/U+2029, which some log viewers treat as line breaks
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def escape_control(text: str) -> str:
    """``text`` with every control, format and line/paragraph separator character escaped
    (``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``), so a value taken from a request can
    never start a new log line or hide what follows. Other characters are left as they are."""
    if text.isprintable():  # every unsafe character is non-printable: the common case costs one scan
        return text
    return "".join(_escape_char(ch) if _unsafe(ch) else ch for ch in text)


def mask_email(email: str) -> str:
    """``j***@example.com``: enough to tell requests apart in logs, not the address itself."""
    local, sep, domain = (email or "").partition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_emails_in(text: str) -> str:
    """Every ``local@domain`` in ``text`` masked (for log lines built from paths)."""
    return _EMAIL_IN_TEXT.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)
