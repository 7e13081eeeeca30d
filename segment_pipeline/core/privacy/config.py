"""The privacy file: suppression lists and consent gates, as data (YAML, validated by pydantic).

Path: ``SEGMENT_PIPELINE_PRIVACY`` (default ``data/privacy.yaml``); the file is optional (no file:
no list, no gate). Example::

    suppression:                      # addresses that are never exported or synced
      - name: unsubscribed            # [A-Za-z0-9_-], unique; names the list in run metadata
        path: suppression/unsubscribed.csv   # a file or a folder (csv, txt, ndjson/jsonl, parquet,
                                             #   relative to this file); or instead:
        # source: _suppression        # a landing folder (<landing>/<source>/, every day's files; a
                                      #   leading _ keeps ingestion from reporting it as unsourced)
        column: email                 # the column (csv, parquet) or key (ndjson); txt: one per line
        delimiter: ","                # csv only (a header row is required)
        hashed: false                 # true: values are SHA-256 hex of the trimmed, lowercased address
      - name: partner_optouts
        path: optouts.parquet
        column: email_sha256
        hashed: true

    consent:                          # off unless declared: a contact is sent only with the attribute true
      destinations: {klaviyo: accepts_email_marketing}   # per destination (syncs)
      segments: {newsletter_vips: accepts_email_marketing}   # per segment id (every export and sync)

A consent attribute must be a ``boolean`` attribute of the data model (``data/model.yaml``); a
contact whose value is false or unknown (NULL) is not sent. Consent itself is never written to a
destination. Errors are :class:`PrivacyFileError` naming the file and the entry
(``data/privacy.yaml: suppression.1.path: ...``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segment_pipeline.core.model import DataModel
from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file

LIST_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: File types a suppression list may be read from (compressed forms are not read).
LIST_SUFFIXES = (".csv", ".txt", ".ndjson", ".jsonl", ".parquet")


class PrivacyFileError(ValueError):
    """The privacy file cannot be read or is invalid; the message names the file and the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuppressionList(_Strict):
    """One declared list: where its addresses come from and whether they are plain or hashed."""

    name: str
    path: str | None = None
    source: str | None = None
    column: str = "email"
    hashed: bool = False
    delimiter: str = ","  # csv files

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n\"":
            raise ValueError(f"delimiter {value!r} must be one character other than a quote or a line break")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not LIST_NAME_RE.fullmatch(value):
            raise ValueError(f"list name {value!r} must be 1-64 letters, digits, '_' or '-'")
        return value

    @model_validator(mode="after")
    def _one_place(self) -> SuppressionList:
        if (self.path is None) == (self.source is None):
            raise ValueError("give exactly one of path (a file or folder) and source (a landing folder)")
        if self.source is not None and (not re.fullmatch(r"[A-Za-z0-9_.-]+", self.source) or self.source in (".", "..")):
            raise ValueError(f"source {self.source!r} must be a landing folder name")
        if not self.column:
            raise ValueError("column must not be empty")
        return self


class ConsentGates(_Strict):
    destinations: dict[str, str] = Field(default_factory=dict)
    segments: dict[str, str] = Field(default_factory=dict)


class PrivacyConfig(_Strict):
    """The validated privacy file (:func:`load_privacy`); ``base`` is the folder paths resolve against."""

    suppression: list[SuppressionList] = Field(default_factory=list)
    consent: ConsentGates = Field(default_factory=ConsentGates)
    source: str = "<memory>"
    base: str = "."

    @field_validator("suppression", mode="before")
    @classmethod
    def _none_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _unique(self) -> PrivacyConfig:
        seen: set[str] = set()
        for i, entry in enumerate(self.suppression):
            if entry.name in seen:
                raise ValueError(f"suppression.{i}.name: list {entry.name!r} is declared twice")
            seen.add(entry.name)
        return self

    def list_location(self, entry: SuppressionList, landing_root: str | Path) -> Path:
        """The file or folder a list is read from."""
        if entry.source is not None:
            return Path(landing_root) / entry.source
        p = Path(entry.path or "")
        return p if p.is_absolute() else Path(self.base) / p

    def consent_for_destination(self, destination: str) -> str | None:
        return self.consent.destinations.get(destination)

    def consent_attributes(self) -> dict[str, str]:
        """Every consent attribute of the file -> where it is declared first, naming the file and
        the entry (``data/privacy.yaml: consent.destinations.klaviyo``); empty when none is."""
        out: dict[str, str] = {}
        for kind, gates in (("destinations", self.consent.destinations), ("segments", self.consent.segments)):
            for key, attr in gates.items():
                out.setdefault(attr, f"{self.source}: consent.{kind}.{key}")
        return out

    def check_model(self, model: DataModel) -> None:
        """Every consent attribute is a boolean attribute of ``model`` (else :class:`PrivacyFileError`)."""
        for kind, gates in (("destinations", self.consent.destinations), ("segments", self.consent.segments)):
            for key, attr in sorted(gates.items()):
                found = model.attributes.get(attr)
                if found is None or found.type != "boolean":
                    what = "not an attribute of the data model" if found is None else f"of type {found.type}"
                    raise PrivacyFileError(f"{self.source}: consent.{kind}.{key}: {attr!r} is {what}; a consent "
                                           "gate needs a boolean attribute (e.g. accepts_email_marketing)")


def parse_privacy(doc: Any, source: str = "<memory>", base: str | Path = ".") -> PrivacyConfig:
    """Validate a parsed privacy document; errors name ``source`` and the entry."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PrivacyFileError(f"{source}: expected a mapping with suppression and/or consent")
    try:
        return PrivacyConfig.model_validate({**doc, "source": source, "base": str(base)})
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        raise PrivacyFileError(cap_message(f"{source}: {'; '.join(parts)}")) from None


def load_privacy(path: str | Path | None, model: DataModel | None = None) -> PrivacyConfig:
    """Read and validate the privacy file; a missing file (or ``None``) means nothing declared.

    With ``model``, consent attributes are checked against it. Raises :class:`PrivacyFileError`.
    """
    if path is None or not Path(path).is_file():
        return PrivacyConfig()
    path = Path(path)
    try:
        doc = load_yaml_file(path, "privacy file")
    except YamlFileError as exc:
        raise PrivacyFileError(str(exc)) from None
    config = parse_privacy(doc, str(path), base=path.parent)
    if model is not None:
        config.check_model(model)
    return config


def current_privacy(model: DataModel | None = None) -> PrivacyConfig:
    """The privacy file named by the settings (``SEGMENT_PIPELINE_PRIVACY``)."""
    from segment_pipeline import settings

    return load_privacy(settings.privacy_file(), model)
