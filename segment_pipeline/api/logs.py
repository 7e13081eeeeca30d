"""Log hygiene for the segment API: nothing a client sends can forge or hide a log line.

Every record of the API's loggers (``segment_pipeline.api``) and of uvicorn's (``uvicorn``,
``uvicorn.error``, ``uvicorn.access``) passes :class:`EscapeControlFilter`, which escapes control,
format and line-separator characters (:func:`~segment_pipeline.core.api_requests.escape_control`)
in the message and in each argument, so paths, query strings, headers, user agents, segment ids
and emails taken from a request stay on their one line whatever they contain (``%0a`` in a path
is logged as ``\\n``). Tracebacks keep their line structure but every line is indented by four
spaces and escaped, so an exception message cannot start a line that looks like a record.
uvicorn's access-log formatter reads its arguments positionally; they are escaped one by one and
keep their types.
"""

from __future__ import annotations

import logging

from segment_pipeline.core.api_requests import escape_control

LOGGERS = ("segment_pipeline.api", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_SCALARS = (int, float, bool, type(None))


def _arg(value: object) -> object:
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, _SCALARS):
        return value
    text = str(value)
    escaped = escape_control(text)
    return value if escaped == text else escaped


def _indented(text: str) -> str:
    return "\n".join("    " + escape_control(line) for line in text.split("\n"))


class EscapeControlFilter(logging.Filter):
    """Escapes what a record carries (see the module docstring); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_control_escaped", False):
            return True
        record._control_escaped = True
        if isinstance(record.msg, str):
            record.msg = escape_control(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _arg(v) for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's problem, not ours
            message = None
        if message is not None and escape_control(message) != message:  # e.g. a %r of an odd object
            record.msg, record.args = escape_control(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _indented(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = _indented(record.stack_info)
        return True


_FILTER = EscapeControlFilter()


def install(extra_handlers: list[logging.Handler] | None = None) -> EscapeControlFilter:
    """Attach the filter to the API's and uvicorn's loggers (idempotent), and to ``extra_handlers``
    (e.g. the root handlers of ``segment-pipeline serve``, for records of any other logger)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in extra_handlers or []:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    return _FILTER
