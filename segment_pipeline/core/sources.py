"""Sources: one per landing folder, each with a kind, a format, reading options and a mapping to
the declared data model (:mod:`segment_pipeline.core.model`). Declared as data in a sources file
(YAML, validated by pydantic; ``data/sources.yaml`` or ``SEGMENT_PIPELINE_SOURCES``).

A source ``<name>`` reads ``<landing>/<name>/date=YYYY-MM-DD/*``. Example::

    sources:
      shopify_customers:
        kind: profiles                  # profiles | events | stream (Segment spec: identify -> profiles,
                                        #   track/page/screen -> events)
        preset: shopify_customers_csv   # a shipped preset (segment_pipeline/presets/<name>.yaml) or a file
                                        #   path; entries written here override the preset's
        format: auto                    # auto (from the file name) | csv | ndjson | parquet
        encoding: utf-8                 # a Python codec name; a byte-order mark wins
        csv: {delimiter: ",", quote: '"'}
        timezone: UTC                   # IANA zone for timestamps without an offset
        observed_at: end_of_landing_day # profiles: the record time; or a field map (below)
        mapping:                        # model field <- source column / JSON path, with transforms
          email: Email
          customer_id: Customer ID
          accepts_email_marketing: {column: Accepts Email Marketing, boolean: {true: [yes], false: [no]}}
          tags: {column: Tags, split: ","}
          created_at: {column: created, timestamp: epoch_ms}
        ignore: [Note]                  # source columns deliberately not kept (still counted)
      app_events:
        kind: events
        event: {column: type}           # or {constant: Order Completed}
        occurred_at: {column: ts, timestamp: iso8601}   # or end_of_landing_day
        properties: {path: properties}  # where a JSON record keeps its properties object
                                        #   (profiles: traits: {path: [traits, context.traits]})
        undeclared_events: keep         # keep (properties untyped) | quarantine

**Deletion requests** (``kind: deletion_requests``, issue 15): files of addresses to forget (CSV with an
``email`` column, NDJSON with an ``email`` key, or text with one address per line), applied by the
daily ``deletion_requests`` asset exactly like ``segment-pipeline forget --file``
(:mod:`segment_pipeline.core.privacy.forget`). No mapping: the other options do not apply.

**Field maps** (:class:`FieldMap`): a string is a column name (``email: Email``); otherwise exactly one
of ``column`` (a CSV/Parquet column or top-level JSON key), ``path`` (a dotted JSON path, ``a.b``,
``items[*].sku`` for every element of a list; a list of paths takes the first one present) or
``constant``; then transforms: ``timestamp`` (``iso8601`` default, ``epoch_s``, ``epoch_ms``, or a
strptime pattern such as ``"%d/%m/%Y %H:%M"``), ``boolean`` (the words for true and false, compared
ignoring case; default ``true/false/yes/no/1/0/y/n``), ``split`` (a delimiter: ``"VIP, wholesale"``
-> ``[VIP, wholesale]``, items trimmed, empty items dropped), ``case`` (``upper``/``lower``),
``optional`` (a tabular file may lack the column). Every value is then cast to the model field's
type, bounded by its ``minimum``/``maximum``: a value that does not fit quarantines its row with a
reason naming the field.

**Default mapping.** A model field the mapping does not name is read from a column (or JSON key) of
its own name when the file has one (``map_same_names: false`` turns this off). Event properties
read their model ``path`` (default: their name), inside ``properties.path`` when set.

**Required.** A column the mapping names explicitly must be in every CSV/Parquet file of the source
(else the file fails, naming file and column), unless ``optional``. Preset entries are optional (a
preset describes every column a format may have); entries mapping to fields the model does not
declare are skipped, so those columns are kept as custom attributes. ``required`` lists fields each
record must give (default: an identity, the email or a linked id; events also ``event_id``,
``event`` and ``occurred_at``).

**Unmapped columns** are never dropped: profiles keep them in ``custom_attributes``, events in
``properties`` (JSON objects), and the ingest report counts them per source (``ignore``d ones too).

Errors name the file, the source and the entry: ``data/sources.yaml: sources.shop.mapping.tags:
unknown model field 'tags'``.
"""

from __future__ import annotations

import codecs
import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file

#: Where the shipped presets live (``preset: <name>`` reads ``<name>.yaml`` from here).
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
END_OF_LANDING_DAY = "end_of_landing_day"
#: Words read as booleans when a field map gives none (compared ignoring case, after trimming).
DEFAULT_TRUE = ("true", "yes", "y", "1", "t")
DEFAULT_FALSE = ("false", "no", "n", "0", "f")
TIMESTAMP_FORMATS = ("iso8601", "epoch_s", "epoch_ms")
#: The words YAML 1.1 reads as booleans (compared ignoring case): an unquoted ``yes`` in a
#: ``boolean`` map arrives as True and is read as all of these.
YAML_TRUE_WORDS = ("yes", "true", "on")
YAML_FALSE_WORDS = ("no", "false", "off")


class SourcesFileError(ValueError):
    """The sources file cannot be read or is invalid; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BooleanWords(_Strict):
    true: list[str] = Field(default_factory=lambda: list(DEFAULT_TRUE))
    false: list[str] = Field(default_factory=lambda: list(DEFAULT_FALSE))

    @model_validator(mode="before")
    @classmethod
    def _yaml_bools(cls, value: Any) -> Any:
        # YAML 1.1 reads true/false, yes/no and on/off (any case) as booleans, keys and words alike:
        # an unquoted word that became a boolean stands for every word YAML reads so
        if isinstance(value, dict):
            out: dict[Any, list[str]] = {}
            for k, v in value.items():
                key = {True: "true", False: "false"}.get(k, k) if isinstance(k, bool) else k
                words = v if isinstance(v, list) else [v]
                out[key] = []
                for w in words:
                    if isinstance(w, bool):
                        out[key].extend(YAML_TRUE_WORDS if w else YAML_FALSE_WORDS)
                    else:
                        out[key].append(str(w))
            return out
        return value


class FieldMap(_Strict):
    """Where one model field comes from in a source record, and how its text becomes the value."""

    column: str | None = None
    path: str | list[str] | None = None
    constant: str | None = None
    optional: bool = False
    timestamp: str | None = None
    boolean: BooleanWords | None = None
    split: str | None = None
    case: Literal["upper", "lower"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"column": value}
        if isinstance(value, dict) and value.get("boolean") is True:
            return {**value, "boolean": {}}
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> FieldMap:
        given = [k for k in ("column", "path", "constant") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of column, path, constant (got {given or 'none'})")
        for p in self.paths():
            if not p or any(not seg for seg in p.replace("[*]", "").split(".")):
                raise ValueError(f"path {p!r}: dotted names, e.g. properties.total or items[*].sku")
        if self.timestamp is not None and self.timestamp not in TIMESTAMP_FORMATS and "%" not in self.timestamp:
            raise ValueError(f"timestamp {self.timestamp!r}: one of {', '.join(TIMESTAMP_FORMATS)} or a strptime pattern with %")
        if self.split is not None and self.split == "":
            raise ValueError("split: give the delimiter, e.g. ','")
        return self

    def paths(self) -> list[str]:
        if self.path is None:
            return []
        return [self.path] if isinstance(self.path, str) else list(self.path)

    def top_keys(self) -> list[str]:
        """The source columns / top-level JSON keys this map reads."""
        if self.column is not None:
            return [self.column]
        return [p.split(".")[0].split("[")[0] for p in self.paths()]


class CsvOptions(_Strict):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote: str = Field(default='"', min_length=1, max_length=1)
    escape: str | None = Field(default=None, min_length=1, max_length=1)  # default: the quote doubled


class ObjectAt(_Strict):
    """Where a JSON record keeps an object of values: ``{path: properties}``; a list of paths takes
    the first one present (``[traits, context.traits]``)."""

    path: str | list[str]

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


PropertiesAt = ObjectAt


class MessageTypes(_Strict):
    """How a ``stream`` source tells profile records from events (Segment spec: ``type``)."""

    column: str = "type"
    profiles: list[str] = Field(default_factory=lambda: ["identify"])
    events: list[str] = Field(default_factory=lambda: ["track", "page", "screen"])
    #: event names of message types whose records carry none (Segment ``page``/``screen`` calls)
    event_names: dict[str, str] = Field(default_factory=lambda: {"page": "Page Viewed", "screen": "Screen Viewed"})


class Source(_Strict):
    """One source (a landing folder): its kind, how to read its files, and its mapping.

    Reading options kept from issue 10: ``encoding`` (text encoding of CSV/NDJSON; a BOM wins),
    ``csv_empty_cell`` (``keep``: an empty CSV cell or Parquet null means "not given"; ``clear``:
    it clears the attribute. NDJSON: a missing key keeps, explicit ``null``/``""`` clears) and
    ``timestamp_tolerance_hours`` (how far past the end of the landing day (UTC) a time may be; the
    default 15 h accepts every real time zone's local day plus clock skew).
    """

    kind: Literal["profiles", "events", "stream", "deletion_requests"] = "profiles"
    preset: str | None = None
    format: Literal["auto", "csv", "ndjson", "parquet"] = "auto"
    encoding: str = "utf-8"
    csv_empty_cell: Literal["keep", "clear"] = "keep"
    timestamp_tolerance_hours: float = Field(default=15.0, ge=0, le=24 * 7)
    csv: CsvOptions = Field(default_factory=CsvOptions)
    timezone: str = "UTC"
    map_same_names: bool = True
    mapping: dict[str, FieldMap] = Field(default_factory=dict)
    #: mapping entries that came from the preset (optional columns; skipped when the model lacks the field)
    preset_mapping: dict[str, FieldMap] = Field(default_factory=dict)
    required: list[str] | None = None
    ignore: list[str] = Field(default_factory=list)
    observed_at: FieldMap | Literal["end_of_landing_day"] = Field(default_factory=lambda: FieldMap(column="updated_at"))
    event: FieldMap = Field(default_factory=lambda: FieldMap(column="event"))
    occurred_at: FieldMap | Literal["end_of_landing_day"] = Field(default_factory=lambda: FieldMap(column="occurred_at"))
    properties: ObjectAt | None = None
    traits: ObjectAt | None = None
    undeclared_events: Literal["keep", "quarantine"] = "keep"
    dedupe_on: Literal["event_id"] | None = "event_id"
    message_type: MessageTypes | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codec = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None
        if not codec._is_text_encoding:  # base64, rot13, zlib...: codecs, but not text encodings
            raise ValueError(f"{value!r} is not a text encoding")
        return codec.name

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _stream(self) -> Source:
        if self.kind == "stream" and self.message_type is None:
            object.__setattr__(self, "message_type", MessageTypes())
        return self

    def feeds(self, kind: str) -> bool:
        """Whether this source feeds the ``kind`` (``profiles``/``events``) tables."""
        return self.kind == kind or self.kind == "stream"


#: Kept for callers of issue 10's name: a source's reading options are fields of :class:`Source`.
SourceOptions = Source


class SourcesFile(_Strict):
    sources: dict[str, Source] = Field(default_factory=dict)


def _merge_preset(name: str, entry: Any, base: Path | None) -> Any:
    """A source entry with its preset's keys below the entry's own (``mapping`` merged per field)."""
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        return entry
    if not entry.get("preset"):
        return _with_kind(name, entry)
    return _with_kind(name, _preset_entry(name, entry, base))


def _with_kind(name: str, entry: dict) -> dict:
    """``kind`` is required, except for a source named ``profiles`` or ``events`` (issue 10's files)."""
    if "kind" in entry:
        return entry
    if name in ("profiles", "events"):
        return {**entry, "kind": name}
    raise ValueError(f"sources.{name}.kind: required (profiles | events | stream)")


def _preset_entry(name: str, entry: dict, base: Path | None) -> dict:
    preset = entry["preset"]
    path = Path(preset)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset}.yaml"
    elif not path.is_absolute() and base is not None:
        path = base.parent / path
    if not path.is_file():
        shipped = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ValueError(f"sources.{name}.preset: no preset {preset!r} (shipped: {', '.join(shipped)}; or a file path)")
    try:
        doc = load_yaml_file(path, "preset") or {}
    except YamlFileError as exc:
        raise ValueError(f"sources.{name}.preset: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"sources.{name}.preset: {path.name} is not a mapping")
    merged = {k: v for k, v in doc.items() if k not in ("mapping", "description", "expects")}
    merged.update({k: v for k, v in entry.items() if k != "mapping"})
    merged["preset_mapping"] = {k: v for k, v in (doc.get("mapping") or {}).items() if k not in (entry.get("mapping") or {})}
    merged["mapping"] = entry.get("mapping") or {}
    return merged


def parse_sources(doc: Any, source: str = "<memory>", base: Path | None = None) -> SourcesFile:
    """Validate a parsed sources document; :class:`SourcesFileError` names ``source`` and the entry."""
    if doc is None:
        return SourcesFile()
    try:
        if isinstance(doc, dict) and isinstance(doc.get("sources"), dict):
            doc = {**doc, "sources": {k: _merge_preset(k, v, base) for k, v in doc["sources"].items()}}
        return SourcesFile.model_validate(doc)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
            )
        else:
            problems = str(exc)
        raise SourcesFileError(cap_message(f"{source}: {problems}")) from None


def load_sources(path: str | Path | None) -> SourcesFile:
    """Read and validate a sources file; a missing file (or ``None``) means no sources declared.

    Raises :class:`SourcesFileError` naming the file and, for a bad entry, its dotted location.
    """
    if path is None or not Path(path).is_file():
        return SourcesFile()
    path = Path(path)
    try:
        doc = load_yaml_file(path, "sources file")  # bounded: size, depth, aliases, encoding
    except YamlFileError as exc:
        raise SourcesFileError(str(exc)) from None
    return parse_sources(doc, str(path), base=path)


def source_options(path: str | Path | None, source: str) -> Source:
    """The declared source ``source``; an undeclared one named ``profiles``/``events`` reads as that
    kind with the defaults (the default mapping: model fields from columns of their names)."""
    declared = load_sources(path).sources.get(source)
    if declared is not None:
        return declared
    return Source(kind="events" if source == "events" else "profiles")


def sources_of_kind(sources: SourcesFile, kind: str) -> dict[str, Source]:
    """The sources feeding ``kind`` (``profiles`` or ``events``; ``stream`` sources feed both)."""
    return {name: s for name, s in sources.sources.items() if s.feeds(kind)}
