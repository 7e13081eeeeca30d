"""Reading a YAML file a user wrote, in bounded time and memory, with short errors.

``yaml.safe_load`` refuses to build arbitrary Python objects, but on a hostile or broken file it
still:

* reads a file of any size and raises a bare ``UnicodeDecodeError`` on bytes that are not UTF-8;
* expands aliases without limit: the "billion laughs" file (ten anchors, each ten aliases of the
  previous one) is a few hundred bytes and stands for 10^9 nodes; whatever walks or prints the
  result (validation, an error message quoting it) then takes seconds and gigabytes;
* recurses once per nesting level while composing, so a file nested a few hundred levels deep
  raises a bare ``RecursionError``;
* silently keeps the last of two equal keys in one mapping (two ``rule:`` keys in a segment).

:func:`load_yaml_file` refuses each of those with a :class:`YamlFileError` whose message names the
file and, where known, the line and column (1-based). Limits (module constants):

* :data:`MAX_FILE_BYTES` (512 KiB, about 1,800 segments of typical size; parsing a file at
  the limit takes seconds) on the file size, checked before parsing;
* :data:`MAX_DEPTH` (100) nested collections;
* :data:`MAX_ALIASES` (500) alias uses per file and :data:`MAX_ALIAS_NODES` (10,000) nodes added
  by expanding them (a node is a scalar, a list or a mapping; a mapping's keys count as nodes).
  An alias of a node that contains it (``&a [*a]``) is refused. Anchors and aliases within these
  limits (reusing a rule fragment in a few segments) work as YAML defines them, merge keys
  (``<<: *base``) included;
* every message is cut to :data:`MAX_MESSAGE_CHARS`.

Text encoding: UTF-8 (a UTF-8 byte-order mark is allowed); a file starting with a UTF-16
byte-order mark is read as UTF-16. Anything else that does not decode is refused with the line and
column of the first bad byte.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 512 * 1024
MAX_DEPTH = 100
MAX_ALIASES = 500
MAX_ALIAS_NODES = 10_000
MAX_MESSAGE_CHARS = 1000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """A YAML file cannot be read or parsed within the limits; the message names the file.

    ``trail`` is the chain of ``(parent node, key node or list index)`` from the document root to
    the place of the problem, when the problem was found while composing (nesting and alias
    limits), else empty: a caller can name the entry (e.g. the segment) that holds it.
    """

    def __init__(self, message: str, trail: list[tuple[Node, Any]] | None = None, *,
                 file: str = "", where: str = "", problem: str = ""):
        super().__init__(cap_message(message))
        self.trail = trail or []
        #: For a limit reached while composing: the file, ``"line L, column C"`` and the problem.
        self.file, self.where, self.problem = file, where, problem


def cap_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to at most ``limit`` characters, marking the cut."""
    if len(message) <= limit:
        return message
    return message[: limit - 30] + f" ... [{len(message) - limit + 30} more characters]"


class _LimitReached(yaml.YAMLError):
    def __init__(self, problem: str, mark, trail: list[tuple[Node, Any]]):
        super().__init__(problem)
        self.problem = problem
        self.mark = mark
        self.trail = trail


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that caps nesting and alias expansion while composing, and refuses duplicate keys."""

    def __init__(self, text: str, name: str):
        super().__init__(text)
        self.name = name  # marks (line/column in error messages) name the file
        self._trail: list[tuple[Node | None, Any]] = []
        self._sizes: dict[int, int] = {}  # id(node) -> node count with aliases expanded
        self._aliases = 0
        self._alias_nodes = 0

    def _refuse(self, problem: str, mark) -> _LimitReached:
        return _LimitReached(problem, mark, [t for t in self._trail if t[0] is not None])

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                self._trail.append((parent, index))
                size = self._sizes.get(id(target))
                if size is None:
                    raise self._refuse(
                        f"alias *{_short(event.anchor)} is used inside the node it names (a recursive alias)",
                        event.start_mark,
                    )
                self._aliases += 1
                self._alias_nodes += size
                if self._aliases > MAX_ALIASES:
                    raise self._refuse(f"more than {MAX_ALIASES} aliases", event.start_mark)
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise self._refuse(
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes (alias *{_short(event.anchor)}"
                        " would exceed it); write the repeated part out or reuse it less",
                        event.start_mark,
                    )
                self._trail.pop()
            return super().compose_node(parent, index)
        if len(self._trail) >= MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self._trail.append((parent, index))
        try:
            node = super().compose_node(parent, index)
        finally:
            self._trail.pop()
        self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: Node) -> int:
        if isinstance(node, SequenceNode):
            return 1 + sum(self._sizes[id(child)] for child in node.value)
        if isinstance(node, MappingNode):
            return 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, Hashable):
                    if key in seen:
                        raise ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {_short(key)} (first at line {seen[key].line + 1})",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of ``path`` (at most :data:`MAX_FILE_BYTES` bytes), decoded as described above.

    Raises :class:`YamlFileError` ``"<what> <path> ..."`` when the file is missing, unreadable,
    too large or not text in a supported encoding.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise YamlFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise YamlFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlFileError(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes; refusing to read it")
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start:exc.start + 1].hex()
        raise YamlFileError(
            f"{what} {path} is not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text: byte 0x{bad} at line {line},"
            f" column {column} (byte offset {exc.start}); save the file as UTF-8"
        ) from None


def load_yaml_file(path: str | Path, what: str = "file") -> Any:
    """Read and parse one YAML document from ``path`` within the module's limits.

    Returns plain Python data (dicts, lists, str, int, float, bool, None, dates), as
    ``yaml.safe_load`` does. Raises :class:`YamlFileError` naming the file (``what`` describes it,
    e.g. ``"segments file"``) and the line and column of the problem.
    """
    text = read_text(path, what)
    try:
        loader = _BoundedLoader(text, str(path))
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, most controls)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise YamlFileError(
            f"{what} {path} is not valid YAML: character U+{exc.character:04X} at line {line}, column {column}"
            " is not allowed in YAML"
        ) from None
    try:
        return loader.get_single_data()
    except _LimitReached as exc:
        raise YamlFileError(
            f"{what} {path}: {_where(exc.mark)}: {exc.problem}", exc.trail,
            file=str(path), where=_where(exc.mark), problem=exc.problem,
        ) from None
    except yaml.YAMLError as exc:
        raise YamlFileError(f"{what} {path} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
