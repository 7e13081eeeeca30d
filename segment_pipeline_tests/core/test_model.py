"""The declared data model: validation errors name the file and the entry; derived shapes."""

from __future__ import annotations

import pytest

from segment_pipeline import settings
from segment_pipeline.core.model import ModelFileError, load_model, parse_model


def test_the_shipped_apparel_model_loads_and_derives_the_table_shapes():
    model = load_model(settings.model_file())
    schemas = model.schemas()
    assert schemas["raw_events"]["price"] == "DECIMAL(18,2)"
    assert schemas["raw_events"]["event"] == "VARCHAR"
    assert schemas["profiles"]["top_brand_90d_share"] == "DOUBLE"
    assert schemas["profiles"]["customer_id"] == "VARCHAR"  # an identity link
    assert model.profile_fields()["dob"] == "date"
    # nothing apparel-specific is built in: the words live in the model file only
    assert "order" in model.events and "brand" in model.property_types()


def test_any_shop_can_declare_its_own_fields_events_and_traits():
    model = parse_model({
        "identity": {"links": ["customer_id", "user_id"]},
        "attributes": {"skin_type": "string", "loyalty_points": {"type": "integer", "minimum": 0},
                       "accepts_email_marketing": "boolean", "tags": "list[string]"},
        "events": {"Order Completed": {"properties": {
                       "revenue": "money", "brands": {"type": "list[string]", "path": "products[*].brand"}}},
                   "Email Opened": None},
        "traits": {"revenue_30d": {"sum": {"event": "Order Completed", "property": "revenue", "within_days": 30}},
                   "opens_14d": {"count": {"event": "Email Opened", "within_days": 14}},
                   "top_brand": {"top": {"property": "brands"}}},
    })
    profiles = model.schemas()["profiles"]
    assert profiles["tags"] == "VARCHAR[]" and profiles["loyalty_points"] == "BIGINT"
    assert profiles["revenue_30d"] == "DECIMAL(18,2)" and profiles["opens_14d"] == "BIGINT"
    assert (profiles["top_brand"], profiles["top_brand_count"], profiles["top_brand_share"]) == ("VARCHAR", "BIGINT", "DOUBLE")
    assert model.schemas()["raw_events"]["brands"] == "VARCHAR[]"
    assert model.links == ("customer_id", "user_id")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"attributes": {"points": "int"}}, "model.yaml: attributes.points.type: unknown type 'int'"),
        ({"attributes": {"email": "string"}}, "attributes.email: 'email' is a built-in column"),
        ({"attributes": {"tier": "string", "Tier": "string"}}, "attributes.Tier: 'Tier' is already declared as attributes.tier"),
        ({"attributes": {"2fa": "boolean"}}, "attributes.2fa: '2fa' is not a valid name"),
        ({"attributes": {"tier\n": "string"}}, "'tier\\n' is not a valid name"),  # ($ would match before \n)
        ({"attributes": {"name": {"type": "string", "minimum": 1}}}, "attributes.name: minimum/maximum apply to numeric types"),
        ({"events": {"a": {"properties": {"p": "string"}}, "b": {"properties": {"p": "integer"}}}},
         "events.b.properties.p: type integer differs from events.a.properties.p (string)"),
        ({"events": {"a": {"properties": {"event": "string"}}}}, "events.a.properties.event: 'event' is a built-in column"),
        ({"traits": {"t": {"sum": {"event": "nope", "property": "zz"}}}}, "traits.t.sum.event: unknown event 'nope'"),
        ({"traits": {"t": {"count": {}, "sum": {}}}}, "traits.t: a trait needs exactly one function"),
        ({"events": {"e": {"properties": {"s": "string"}}}, "traits": {"t": {"sum": {"property": "s"}}}},
         "traits.t.sum.property: 's' is string; sum needs a number"),
        ({"traits": {"t": {"count": {"property": "x"}}}}, "traits.t.count: count takes no property"),
        ({"identity": {"primary": "phone"}}, "identity.primary"),
        ({"segments": []}, "segments: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_file_and_the_entry(doc, message):
    with pytest.raises(ModelFileError) as exc:
        parse_model(doc, source="model.yaml")
    assert str(exc.value).startswith("model.yaml: ")
    assert message in str(exc.value)


def test_a_missing_or_malformed_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "model.yaml")
    bad = tmp_path / "model.yaml"
    bad.write_text("attributes: [unclosed\n")
    with pytest.raises(ModelFileError, match=str(bad)):
        load_model(bad)
