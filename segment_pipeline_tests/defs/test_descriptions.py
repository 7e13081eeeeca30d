"""What the Dagster UI shows first: asset descriptions (raw in the catalog list, rendered on the
asset page) and the segment member preview's caption."""

from __future__ import annotations

import re

import dagster as dg
import pytest

from segment_pipeline.core.segments import load_catalog
from segment_pipeline.defs.segments.assets import preview_caption, segment_description

#: Markup that the catalog would show literally: Markdown emphasis/code/fences/headings/links and
#: reStructuredText literals.
MARKUP = re.compile(r"``|`|\*\*|__|^\s*#|^\s*[-*] |\]\(|:func:|:class:", re.M)


@pytest.fixture(scope="module")
def specs() -> list[dg.AssetSpec]:
    from segment_pipeline.definitions import defs

    return list(defs().resolve_all_asset_specs())


def test_every_asset_has_a_plain_text_description(specs):
    assert len(specs) > 20
    for spec in specs:
        assert spec.description, spec.key
        assert not MARKUP.search(spec.description), f"{spec.key.to_user_string()}: {spec.description!r}"


def test_segment_description_reads_as_one_plain_paragraph(tmp_path):
    path = tmp_path / "segments.yaml"
    path.write_text(
        "segments:\n"
        "  - id: nike_fans\n"
        "    name: Nike fans\n"
        "    description: At least 40% of recent brand interactions are Nike.\n"
        "    active_from: 2026-11-08\n"
        "    rule: {affinity: {dimension: brand, value: Nike, min_share: 0.4, within_days: 90}}\n"
    )
    (seg,) = load_catalog(str(path)).segments
    assert segment_description(seg) == (
        "Nike fans (dynamic, active, from 2026-11-08). At least 40% of recent brand interactions are Nike. "
        "Rule: {affinity: {property: brand, value: Nike, min_share: 0.4, within_days: 90}}"
    )  # the rule in its canonical spelling (the file used the older "dimension")


def test_segment_assets_keep_the_rule_as_definition_metadata(specs):
    nike = next(s for s in specs if s.key == dg.AssetKey(["segment", "nike_fans"]))
    assert nike.metadata["rule"].value == {"affinity": {"property": "brand", "value": "Nike", "min_share": 0.4,
                                                        "min_interactions": 1, "within_days": 90}}


@pytest.mark.parametrize(("members", "caption"), [
    (0, "no members"),
    (1, "all 1 member, by email"),
    (100, "all 100 members, by email"),
    (101, "first 100 of 101 members, by email"),
    (4571, "first 100 of 4,571 members, by email"),
])
def test_preview_caption_says_what_part_is_shown(members, caption):
    assert preview_caption(members) == caption


def test_no_long_markdown_metadata_that_opens_scrolled_to_its_end(tmp_path):
    """The UI shows a Markdown value over 1,000 characters in a dialog that opens scrolled to its
    end; tables render inline from the first row. The memberships summary and the segment previews
    are tables."""
    from segment_pipeline_tests.defs.test_pipeline import FIRST, pipeline_assets, range_tags, resources

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(pipeline_assets(), instance=instance, resources=resources(tmp_path),
                          tags=range_tags(FIRST, FIRST)).success
    keys = [k for k in instance.get_asset_keys() if k.path[0] in ("memberships", "segment")]
    assert len(keys) > 10
    for key in keys:
        (record,) = instance.fetch_materializations(key, limit=1).records
        metadata = record.asset_materialization.metadata
        for label, value in metadata.items():
            assert not (isinstance(value, dg.MarkdownMetadataValue) and len(value.md_str) >= 1000), (key, label)
    summary = instance.fetch_materializations(dg.AssetKey("memberships"), limit=1).records[0]
    table = summary.asset_materialization.metadata["summary"]
    assert isinstance(table, dg.TableMetadataValue) and [c.name for c in table.schema.columns][:2] == ["segment", "name"]
