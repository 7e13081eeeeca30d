"""Per-source reading options, declared as data in a sources file (YAML, validated by pydantic).

A *source* is one landing folder (``<landing>/<source>/date=YYYY-MM-DD/...``); today the folder
names are the two kinds, ``profiles`` and ``events``. The file is optional: a source it does not
name reads with the defaults below. Example (``data/sources.yaml``, or the file named by
``SEGMENT_PIPELINE_SOURCES``)::

    sources:
      profiles:
        encoding: cp1252            # a Windows export; any Python codec name (utf-8, latin-1, utf-16)
        csv_empty_cell: keep        # keep | clear: what an empty CSV cell means for an attribute
      events:
        timestamp_tolerance_hours: 15

Errors name the file, the source and the field: ``data/sources.yaml: sources.profiles.encoding:
unknown text encoding 'utf-9'``.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file


class SourcesFileError(ValueError):
    """The sources file cannot be read or is invalid; the message names the file and the entry."""


class SourceOptions(BaseModel):
    """How to read one source's landing files.

    * ``encoding``: text encoding of its CSV and NDJSON files (a Python codec name; a byte-order
      mark, when present, wins). Default ``utf-8``: bytes that are not UTF-8 quarantine their row.
    * ``csv_empty_cell``: ``keep`` (default) treats an empty CSV cell as "no value given", so the
      attribute keeps its earlier value; ``clear`` treats it as an explicit null that clears it.
      A Parquet null or empty value follows the same setting (a table has a cell for every
      column, like CSV); a column the file does not have always keeps. (NDJSON needs no
      setting: a missing key keeps, an explicit ``null`` or ``""`` clears.)
    * ``timestamp_tolerance_hours``: how far past the end of the landing day (UTC) a timestamp may
      be before its row is quarantined. The default, 15 h, accepts every real time zone's local
      day (UTC-12 is 12 h behind; UTC+14 is ahead and so never late) plus clock skew.
    """

    model_config = ConfigDict(extra="forbid")

    encoding: str = "utf-8"
    csv_empty_cell: Literal["keep", "clear"] = "keep"
    timestamp_tolerance_hours: float = Field(default=15.0, ge=0, le=24 * 7)

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


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: dict[str, SourceOptions] = Field(default_factory=dict)


def load_sources(path: str | Path | None) -> SourcesFile:
    """Read and validate a sources file; a missing file (or ``None``) means all defaults.

    Raises :class:`SourcesFileError` naming the file and, for a bad entry, its dotted location.
    """
    if path is None or not Path(path).is_file():
        return SourcesFile()
    path = Path(path)
    try:
        doc = load_yaml_file(path, "sources file")  # bounded: size, depth, aliases, encoding
    except YamlFileError as exc:
        raise SourcesFileError(str(exc)) from None
    if doc is None:
        return SourcesFile()
    try:
        return SourcesFile.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise SourcesFileError(cap_message(f"{path}: {problems}")) from None


def source_options(path: str | Path | None, source: str) -> SourceOptions:
    """The options of ``source`` (a landing folder name), defaults when the file does not name it."""
    return load_sources(path).sources.get(source, SourceOptions())
