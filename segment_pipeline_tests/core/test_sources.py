"""The sources file: defaults, validation errors naming file and entry."""

from __future__ import annotations

import pytest

from segment_pipeline.core.sources import SourcesFileError, load_sources, source_options


def test_missing_file_means_defaults(tmp_path):
    opts = source_options(tmp_path / "nope.yaml", "profiles")
    assert (opts.encoding, opts.csv_empty_cell, opts.timestamp_tolerance_hours) == ("utf-8", "keep", 15.0)


def test_declared_options_are_read_and_encoding_normalized(tmp_path):
    f = tmp_path / "sources.yaml"
    f.write_text("sources:\n  profiles:\n    encoding: CP1252\n    csv_empty_cell: clear\n", encoding="utf-8")
    opts = source_options(f, "profiles")
    assert opts.encoding == "cp1252" and opts.csv_empty_cell == "clear"
    assert source_options(f, "events").encoding == "utf-8"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("sources:\n  profiles:\n    encoding: utf-9\n", "sources.profiles.encoding: Value error, unknown text encoding 'utf-9'"),
        ("sources:\n  profiles:\n    encoding: base64\n", "sources.profiles.encoding: Value error, 'base64' is not a text encoding"),
        ("sources:\n  events:\n    csv_empty_cell: maybe\n", "sources.events.csv_empty_cell"),
        ("sources:\n  events:\n    delimiter: ';'\n", "sources.events.delimiter: Extra inputs are not permitted"),
        ("sources: [\n", "is not valid YAML"),
    ],
)
def test_errors_name_the_file_and_entry(tmp_path, body, expected):
    f = tmp_path / "sources.yaml"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(SourcesFileError) as err:
        load_sources(f)
    assert str(f) in str(err.value) and expected in str(err.value)
