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


def test_a_preset_is_referenced_by_name_or_file_and_the_entry_overrides_it_field_by_field(tmp_path):
    own = tmp_path / "presets" / "crm.yaml"
    own.parent.mkdir()
    own.write_text("kind: profiles\nformat: csv\nmapping:\n  email: Mail\n  first_name: Given\n", encoding="utf-8")
    f = tmp_path / "sources.yaml"
    f.write_text(
        "sources:\n"
        "  shop:\n    preset: shopify_customers_csv\n    encoding: cp1252\n    mapping: {email: E-Mail}\n"
        "  crm:\n    preset: presets/crm.yaml\n    format: ndjson\n",
        encoding="utf-8")
    shop, crm = load_sources(f).sources["shop"], load_sources(f).sources["crm"]
    assert (shop.kind, shop.format, shop.encoding, shop.observed_at) == ("profiles", "csv", "cp1252", "end_of_landing_day")
    assert shop.mapping["email"].column == "E-Mail" and "email" not in shop.preset_mapping
    assert shop.preset_mapping["tags"].split == "," and shop.preset_mapping["customer_id"].column == "Customer ID"
    assert (crm.format, crm.preset_mapping["first_name"].column) == ("ndjson", "Given")


def test_sources_named_like_the_two_kinds_need_no_kind_others_do(tmp_path):
    f = tmp_path / "sources.yaml"
    f.write_text("sources:\n  events: {encoding: latin-1}\n  profiles:\n", encoding="utf-8")
    loaded = load_sources(f).sources
    assert (loaded["events"].kind, loaded["profiles"].kind) == ("events", "profiles")
    f.write_text("sources:\n  loyalty: {encoding: latin-1}\n", encoding="utf-8")
    with pytest.raises(SourcesFileError, match="sources.loyalty.kind: required"):
        load_sources(f)
