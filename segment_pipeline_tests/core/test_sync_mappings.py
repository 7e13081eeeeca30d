"""Field mappings (issue 16) against the stateful fakes: real clients on loopback, real state store.

Mapped fields land with the destination's types, a change to one attribute sends one contact
with that field only, a removed mapping stops writing its field, an added one sends everyone once,
dotdigital creates typed data fields and refuses wrong types and long text, consent fields cannot
be mapped, and the removal guard stops a run that would empty a list after a bad upstream day.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from segment_pipeline.core.esp.http import EspError
from segment_pipeline.core.model import parse_model
from segment_pipeline.core.privacy.erasure import mirror_tables, propagate
from segment_pipeline.core.privacy.ledger import Ledger
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoDestination
from segment_pipeline.core.sync.mappings import MappingFileError, load_mappings, parse_mappings
from segment_pipeline.core.sync.plan import RemovalGuardError, mask_email
from segment_pipeline.core.sync.runner import KlaviyoSettings, destination_mappings, sync
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.braze import FakeBraze, braze_client
from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
from segment_pipeline_tests.fakes.helpers import dotdigital_client, klaviyo_client, write_memberships
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

D1, D2, D3 = "2026-11-01", "2026-11-02", "2026-11-03"
SYNCED = {"loyal": "Loyal Customers"}
MODEL = parse_model({
    "attributes": {"first_name": "string", "city": "string", "bio": "string", "points": "integer",
                   "vip": "boolean", "dob": "date", "last_order_at": "timestamp", "tags": "list[string]",
                   "revenue": "money"},
})
EMAILS = ("ann@shop.com", "bob@shop.com", "cat@shop.com")
BASE: dict[str, dict[str, Any]] = {
    "ann@shop.com": {"first_name": "Ann", "city": "Berlin", "points": 120, "vip": True, "dob": dt.date(1990, 5, 1),
                     "last_order_at": dt.datetime(2026, 10, 30, 12, 0, 0), "tags": ["a", "b"], "bio": "hi",
                     "revenue": 12.5},
    "bob@shop.com": {"first_name": "Bob", "city": "Oslo", "points": 7, "vip": False, "dob": None,
                     "last_order_at": dt.datetime(2026, 10, 1, 8, 30, 0), "tags": [], "bio": "x" * 300,
                     "revenue": 0},
    "cat@shop.com": {"first_name": "Cat", "city": None, "points": 0, "vip": None, "dob": None,
                     "last_order_at": None, "tags": None, "bio": None, "revenue": None},
}


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse", model=MODEL)


def write_profiles(wh: Warehouse, day: str, profiles: dict[str, dict[str, Any]]) -> None:
    """The ``profiles`` partition of ``day``: one row per email, the given attributes, NULL elsewhere."""
    schema = wh.schema("profiles")
    given = pa.Table.from_pylist([{"email": e, **{k: v for k, v in a.items() if k in schema}}
                                  for e, a in profiles.items()],
                                 schema=pa.schema([("email", pa.string()), ("first_name", pa.string()),
                                                   ("city", pa.string()), ("bio", pa.string()),
                                                   ("points", pa.int64()), ("vip", pa.bool_()),
                                                   ("dob", pa.date32()), ("last_order_at", pa.timestamp("us")),
                                                   ("tags", pa.list_(pa.string())), ("revenue", pa.float64())]))
    con = duckdb.connect()
    try:
        con.register("given", given)
        cols = [f'g."{c}"' if c in given.column_names else
                ("substr(md5(g.email), 1, 16) AS identity_id" if c == "identity_id" else f'NULL::{t} AS "{c}"')
                for c, t in schema.items()]
        wh.write_partition(con, "profiles", day, f"SELECT {', '.join(cols)} FROM given g")
    finally:
        con.close()


def day_data(wh: Warehouse, day: str, profiles: dict[str, dict[str, Any]], members: tuple[str, ...] = EMAILS) -> None:
    write_memberships(wh, day, [("loyal", e) for e in members])
    write_profiles(wh, day, profiles)


def changed(per_email: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:data:`BASE` with these emails' attributes changed."""
    out = {e: dict(a) for e, a in BASE.items()}
    for email, attrs in per_email.items():
        out[email].update(attrs)
    return out


def mappings(tmp_path: Path, text: str, name: str):
    path = tmp_path / "destinations.yaml"
    path.write_text(text)
    return load_mappings(path, MODEL, ("klaviyo", "dotdigital", "braze", "meta")).of(name)


def run(name: str, wh: Warehouse, tmp_path: Path, day: str, client, maps, **kw):
    settings = kw.pop("settings", None)
    return sync(name, wh, day, SYNCED, state_dir=tmp_path / f"state-{name}", dry_run_root=tmp_path / "dry",
                client=client, settings=settings, mappings=maps, **kw)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("klaviyo: {mappings: [{from: nope, to: x}]}", "klaviyo.mappings[0] (from: nope, to: x): unknown attribute or trait 'nope'"),
    ("klaviyo: {mappings: [{from: dob, to: first_name}]}", "dob is date; Klaviyo first_name takes string"),
    ("klaviyo: {mappings: [{from: vip, to: subscriptions}]}", "'subscriptions' is a consent, subscription or opt-in field"),
    ("klaviyo: {mappings: [{from: first_name, to: nosto_segment}]}", "the property holding the segment names"),
    ("dotdigital: {mappings: [{from: first_name, to: OPTINTYPE}]}", "consent, subscription or opt-in field"),
    ("dotdigital: {mappings: [{from: dob, to: POINTS, type: Numeric}]}", "dob is date, which a Numeric data field cannot hold"),
    ("braze: {mappings: [{from: vip, to: email_subscribe}]}", "'email_subscribe' is a consent, subscription or opt-in field"),
    ("braze: {mappings: [{from: first_name, to: subscription_groups}]}", "consent, subscription or opt-in field"),
    ("braze: {mappings: [{from: first_name, to: a}, {from: city, to: a}]}",
     "braze.mappings[1] (from: city, to: a): 'a' is mapped twice (also braze.mappings[0])"),
    ("meta: {mappings: [{from: first_name, to: fn}]}", "meta holds audience members only"),
    ("klaviyo: {mappings: [{from: email, to: e}]}", "email is the identifier"),
    ("klaviyo: {mappings: [{from: first_name, to: x, when_null: wipe}]}",
     "klaviyo.mappings.0.when_null: Input should be 'leave' or 'clear'"),
    ("klaviyo: {mappings: [{from: first_name, to: x, null: wipe}]}", "klaviyo.mappings.0.when_null"),
    ("mailchimp: {mappings: []}", "mailchimp: unknown destination"),
])
def test_bad_mappings_are_refused_naming_the_file_and_the_entry(tmp_path, text, expected):
    with pytest.raises(MappingFileError) as err:
        mappings(tmp_path, text, "klaviyo")
    assert str(err.value).startswith(f"{tmp_path / 'destinations.yaml'}: ") and expected in str(err.value)


def test_no_destinations_file_means_no_mappings(tmp_path):
    assert load_mappings(tmp_path / "missing.yaml", MODEL).of("klaviyo") == ()
    assert parse_mappings(None, MODEL).of("braze") == ()


def test_mask_email():
    assert mask_email("jane@example.com") == "j***@example.com" and mask_email("x") == "x***"


# -- Klaviyo -----------------------------------------------------------------------------------
KLAVIYO_MAP = """
klaviyo:
  mappings:
    - {from: first_name, to: first_name}
    - {from: city, to: location.city}
    - {from: points, to: loyalty_points}
    - {from: vip, to: vip}
    - {from: last_order_at, to: last_order_at, when_null: clear}
    - {from: dob, to: birthday}
    - {from: tags, to: tags}
    - {from: revenue, to: revenue}
"""


def _job_profiles(fake: FakeKlaviyo, before: set[str]) -> list[dict[str, Any]]:
    return [p for jid, j in fake.jobs.items() if jid not in before for p in j["profiles"]]


def test_klaviyo_mapped_fields_land_typed_and_only_changes_are_sent(tmp_path, wh):
    maps = mappings(tmp_path, KLAVIYO_MAP, "klaviyo")
    day_data(wh, D1, BASE)
    with FakeKlaviyo() as fake:
        report = run("klaviyo", wh, tmp_path, D1, klaviyo_client(fake.url), maps)
        assert report.upserted == 3 and report.fields_updated == 3 and report.plan["add"] == 3
        ann = fake.profile("ann@shop.com")
        assert ann["first_name"] == "Ann" and ann["location"] == {"city": "Berlin"}
        assert ann["properties"] == {"nosto_segment": ["Loyal Customers"], "loyalty_points": 120, "vip": True,
                                     "last_order_at": "2026-10-30T12:00:00Z", "birthday": "1990-05-01",
                                     "tags": ["a", "b"], "revenue": 12.5}
        cat = fake.profile("cat@shop.com")  # no value + null: leave -> not sent; clear -> nothing to clear yet
        assert "vip" not in cat["properties"] and "location" not in cat and cat["properties"]["loyalty_points"] == 0
        assert fake.spec_violations == [] and fake.consent_attempts == []
        assert StateStore(tmp_path / "state-klaviyo").field_values(
            f"klaviyo|{fake.url}|list=x|property=nosto_segment", "loyalty_points") == {
            "ann@shop.com": 120, "bob@shop.com": 7, "cat@shop.com": 0}

        again = run("klaviyo", wh, tmp_path, D1, klaviyo_client(fake.url), maps)
        assert again.upserted == 0 and again.planned_upserts == 0  # nothing changed: nothing sent

        # day 2: one attribute of Ann changes, Bob's last order is gone (null: clear), Cat's first name
        # is gone (null: leave): two profiles, each carrying only its change
        day_data(wh, D2, changed({"ann@shop.com": {"points": 130}, "bob@shop.com": {"last_order_at": None}, "cat@shop.com": {"first_name": None}}))
        jobs = set(fake.jobs)
        r2 = run("klaviyo", wh, tmp_path, D2, klaviyo_client(fake.url), maps)
        sent = sorted(_job_profiles(fake, jobs), key=lambda p: p["attributes"]["email"])
        assert [p["attributes"] for p in sent] == [
            {"email": "ann@shop.com", "properties": {"loyalty_points": 130}},
            {"email": "bob@shop.com", "properties": {}}]
        assert sent[1]["meta"] == {"patch_properties": {"unset": ["last_order_at"]}}
        assert r2.upserted == 2 and r2.plan["fields"]["loyalty_points"]["set"] == 1
        assert r2.leaving == 1  # Bob loses a value Klaviyo held: what the removal guard counts
        assert r2.plan["fields"]["last_order_at"]["clear"] == 1
        assert fake.profile("ann@shop.com")["properties"]["loyalty_points"] == 130
        assert "last_order_at" not in fake.profile("bob@shop.com")["properties"]
        assert fake.profile("cat@shop.com")["first_name"] == "Cat"  # leave: kept

        # day 3: the points mapping is removed and city -> home_city added: Ann's new points are not
        # written any more (Klaviyo keeps 130), everyone gets home_city once
        maps3 = mappings(tmp_path, KLAVIYO_MAP.replace("    - {from: points, to: loyalty_points}\n", "")
                         + "    - {from: city, to: home_city}\n", "klaviyo")
        day_data(wh, D3, changed({"ann@shop.com": {"points": 999}, "bob@shop.com": {"last_order_at": None}, "cat@shop.com": {"first_name": None}}))
        jobs = set(fake.jobs)
        r3 = run("klaviyo", wh, tmp_path, D3, klaviyo_client(fake.url), maps3)
        sent = sorted(_job_profiles(fake, jobs), key=lambda p: p["attributes"]["email"])
        assert [p["attributes"]["properties"] for p in sent] == [{"home_city": "Berlin"}, {"home_city": "Oslo"}]
        assert r3.upserted == 2 and fake.profile("ann@shop.com")["properties"]["loyalty_points"] == 130


# -- dotdigital --------------------------------------------------------------------------------
DD_MAP = """
dotdigital:
  mappings:
    - {from: first_name, to: FIRSTNAME}
    - {from: points, to: POINTS}
    - {from: vip, to: VIP}
    - {from: last_order_at, to: LASTORDER, null: clear}
    - {from: bio, to: BIO}
    - {from: revenue, to: REVENUE}
"""


def test_dotdigital_creates_typed_fields_respects_limits_and_clears_one_field_alone(tmp_path, wh):
    maps = mappings(tmp_path, DD_MAP, "dotdigital")
    day_data(wh, D1, BASE)
    with FakeDotdigital() as fake:
        fake.seed_contact("ann@shop.com", {"FIRSTNAME": "Old", "OTHER": "keep"}, opt_in="Double")
        report = run("dotdigital", wh, tmp_path, D1, dotdigital_client(fake.url), maps)
        assert {n: fake.data_fields[n]["type"] for n in ("POINTS", "VIP", "LASTORDER", "BIO", "REVENUE")} == {
            "POINTS": "Numeric", "VIP": "Boolean", "LASTORDER": "Date", "BIO": "String", "REVENUE": "Numeric"}
        ann = fake.contacts["ann@shop.com"]
        assert ann["dataFields"] == {"FIRSTNAME": "Ann", "OTHER": "keep", "NOSTOSEGMENT": "Loyal Customers",
                                     "POINTS": 120, "VIP": True, "LASTORDER": "2026-10-30T12:00:00", "BIO": "hi",
                                     "REVENUE": 12.5}
        assert ann["optInType"] == "Double"
        # Bob's 300-character bio is over the 255-character text limit: not sent, counted, named
        assert "BIO" not in fake.contacts["bob@shop.com"]["dataFields"]
        assert report.fields_over_limit == 1 and any("BIO (1)" in n for n in report.notes)
        assert fake.spec_violations == [] and fake.consent_attempts == []
        assert fake.create_calls["data-fields"] == 6  # NOSTOSEGMENT + 5 (FIRSTNAME is built in)

        day_data(wh, D2, changed({"ann@shop.com": {"points": 130}, "bob@shop.com": {"last_order_at": None}}))
        imports = set(fake.imports)
        r2 = run("dotdigital", wh, tmp_path, D2, dotdigital_client(fake.url), maps)
        new = [fake.imports[i] for i in fake.imports if i not in imports]
        by_merge = {i["merge"]: i["rows"] for i in new}
        assert by_merge["Overwrite"] == [["Email", "LASTORDER"], ["bob@shop.com", ""]]
        upsert = by_merge["OnlyOverwriteIfNotEmpty"]
        assert upsert[0] == ["Email", "NOSTOSEGMENT", "FIRSTNAME", "POINTS", "VIP", "LASTORDER", "BIO", "REVENUE"]
        assert upsert[1:] == [["ann@shop.com", "", "", "130", "", "", "", ""]]
        bob = fake.contacts["bob@shop.com"]["dataFields"]
        assert bob["LASTORDER"] is None and bob["POINTS"] == 7 and bob["NOSTOSEGMENT"] == "Loyal Customers"
        assert fake.contacts["ann@shop.com"]["dataFields"]["OTHER"] == "keep"
        assert (r2.upserted, r2.fields_cleared, r2.leaving) == (1, 1, 1)
        again = run("dotdigital", wh, tmp_path, D2, dotdigital_client(fake.url), maps)
        assert again.upserted == 0 and again.fields_cleared == 0 and again.planned_field_clears == 0


def test_dotdigital_field_of_another_type_stops_the_run_naming_it(tmp_path, wh):
    day_data(wh, D1, BASE)
    with FakeDotdigital() as fake:
        fake.data_fields["POINTS"] = {"name": "POINTS", "type": "String", "visibility": "Private", "defaultValue": None}
        with pytest.raises(EspError, match="POINTS exists with type String, but mapped from points needs Numeric"):
            run("dotdigital", wh, tmp_path, D1, dotdigital_client(fake.url),
                mappings(tmp_path, DD_MAP, "dotdigital"))
        assert fake.imports == {}


def test_dotdigital_fake_refuses_a_value_its_field_type_cannot_hold(tmp_path):
    with FakeDotdigital() as fake:
        client = dotdigital_client(fake.url)
        client.ensure_data_field("POINTS", "Numeric")
        book = client.ensure_address_book("B")
        iid = client.start_import(book, b"Email,POINTS\r\nok@shop.com,12\r\nbad@shop.com,twelve\r\n", "Overwrite")
        client.wait_import(iid)
        faults = client.import_faults(iid)
        assert [(f.email, f.reason) for f in faults] == [("bad@shop.com", "Invalid value for data field POINTS (Numeric)")]
        assert fake.contacts["ok@shop.com"]["dataFields"]["POINTS"] == 12


# -- Braze -------------------------------------------------------------------------------------
def test_braze_mapped_attributes_and_one_change_sends_one_object(tmp_path, wh):
    maps = mappings(tmp_path, """
braze:
  mappings:
    - {from: first_name, to: first_name}
    - {from: dob, to: dob}
    - {from: points, to: points}
    - {from: last_order_at, to: last_order_at, when_null: clear}
    - {from: bio, to: bio}
""", "braze")
    day_data(wh, D1, BASE)
    with FakeBraze() as fake:
        report = run("braze", wh, tmp_path, D1, braze_client(fake.url), maps)
        assert report.upserted == 3 and report.fields_over_limit == 1
        assert fake.attribute_of("ann@shop.com", "dob") == "1990-05-01"
        assert fake.attribute_of("ann@shop.com", "last_order_at") == "2026-10-30T12:00:00Z"
        assert fake.attribute_of("ann@shop.com", "points") == 120
        assert fake.attribute_of("bob@shop.com", "bio") is None  # over Braze's 255 characters: not sent
        day_data(wh, D2, changed({"ann@shop.com": {"points": 130}, "bob@shop.com": {"last_order_at": None}}))
        seen = len(fake.objects)
        r2 = run("braze", wh, tmp_path, D2, braze_client(fake.url), maps)
        assert sorted(fake.objects[seen:], key=lambda o: o["email"]) == [
            {"email": "ann@shop.com", "points": 130}, {"email": "bob@shop.com", "last_order_at": None}]
        assert r2.upserted == 2 and fake.attribute_of("bob@shop.com", "last_order_at") is None
        assert fake.attribute_of("bob@shop.com", "nosto_segment") == ["Loyal Customers"]
        assert fake.spec_violations == [] and fake.consent_attempts == []


# -- the removal guard -------------------------------------------------------------------------
def test_removal_guard_stops_a_run_that_would_empty_the_list_unless_confirmed(tmp_path, wh):
    people = [f"u{i}@shop.com" for i in range(20)]
    write_memberships(wh, D1, [("loyal", e) for e in people])
    write_memberships(wh, D2, [("loyal", e) for e in people[:2]])  # a bad upstream day: 18 of 20 gone
    settings = KlaviyoSettings(max_profiles_per_job=50)
    with FakeKlaviyo() as fake:
        run("klaviyo", wh, tmp_path, D1, klaviyo_client(fake.url), (), settings=settings, max_removal_share=0.2)
        (lid,) = fake.lists_named("Nosto Customers")
        jobs = len(fake.jobs)
        with pytest.raises(RemovalGuardError) as err:
            run("klaviyo", wh, tmp_path, D2, klaviyo_client(fake.url), (), settings=settings, max_removal_share=0.2)
        assert "18 of the 20 contacts the destination holds (90.0%), over the removal guard of 20%" in str(err.value)
        assert "--allow-large-removal" in str(err.value)
        assert len(fake.jobs) == jobs and len(fake.member_emails(lid)) == 20  # nothing was sent
        with StateStore(tmp_path / "state-klaviyo") as store:
            assert store.runs(1)[0]["status"] == "failed"
        ok = run("klaviyo", wh, tmp_path, D2, klaviyo_client(fake.url), (), settings=settings,
                 max_removal_share=0.2, allow_large_removal=True)
        assert ok.removed == 18 and ok.cleared == 18 and fake.member_emails(lid) == set(people[:2])
        assert any(n.startswith("confirmed: klaviyo: this run would") for n in ok.notes)
        assert ok.plan["leaving"] == 18 and ok.plan["contacts_held"] == 20


def test_the_shipped_example_validates_against_the_shipped_model():
    from segment_pipeline.core.model import load_model
    from segment_pipeline.settings import PROJECT_ROOT

    loaded = load_mappings(PROJECT_ROOT / "examples" / "destinations.yaml", load_model(PROJECT_ROOT / "data" / "model.yaml"),
                           ("klaviyo", "dotdigital", "braze", "meta"))
    assert [m.field_type for m in loaded.of("dotdigital")] == ["String", "String", "String", "Numeric", "Date"]
    assert {m.target for m in loaded.of("klaviyo")} >= {"location.city", "last_order_at"}


def test_dry_runs_with_mappings_write_the_requests_they_would_send(tmp_path, wh):
    day_data(wh, D1, BASE)
    text = KLAVIYO_MAP + DD_MAP + "braze:\n  mappings:\n    - {from: points, to: points}\n"
    for name in ("klaviyo", "dotdigital", "braze"):
        report = run(name, wh, tmp_path, D1, None, mappings(tmp_path, text, name))
        files = sorted(p.name for p in Path(report.payload_dir).iterdir())
        assert report.dry_run and report.planned_field_values > 0 and "summary.json" in files
        if name == "dotdigital":  # Cat has no last order (when_null: clear): its own Overwrite file
            assert "unset-LASTORDER-00001-Overwrite.csv" in files
            body = (Path(report.payload_dir) / "upsert-00001-OnlyOverwriteIfNotEmpty.csv").read_bytes().decode()
            assert body.startswith("Email,NOSTOSEGMENT,FIRSTNAME,POINTS,VIP,LASTORDER,BIO,REVENUE\r\n")


def test_erasure_removes_a_confirmed_address_from_every_mirror_table_held_values_included(tmp_path, wh):
    """Review item 3: the mirror tables erasure scrubs come from the mirror's own schema (every table
    with an ``email`` column), so issue 16's ``held_values`` loses the address and its mapped values."""
    maps = mappings(tmp_path, KLAVIYO_MAP, "klaviyo")
    day_data(wh, D1, BASE)
    state = wh.root / "sync_state" / "klaviyo"
    gone = "ann@shop.com"
    with FakeKlaviyo() as fake:
        report = sync("klaviyo", wh, D1, SYNCED, state_dir=state, dry_run_root=tmp_path / "dry",
                      client=klaviyo_client(fake.url), mappings=maps)
        assert report.status == "ok" and report.fields_updated == 3
        with StateStore(state) as store:
            tables = mirror_tables(store.con)
            assert "held_values" in tables and {"held", "members", "truncated", "rejects"} <= set(tables)
            assert store.con.execute("SELECT count(*) FROM held_values WHERE email = ?", [gone]).fetchall()[0][0]
        ledger = Ledger(wh.root)
        (req,) = ledger.request([gone], "cli")
        ledger.warehouse_done(req.request_id)
        klaviyo = KlaviyoDestination(klaviyo_client(fake.url), KlaviyoSettings())
        klaviyo.erase_wait_seconds = 5.0

        done = propagate(wh.root, {"klaviyo": klaviyo})

        assert done.destinations["klaviyo"].confirmed == 1 and done.settled == 1 and fake.profile(gone) is None
        with StateStore(state) as store:
            for table in mirror_tables(store.con):
                assert store.con.execute(f"SELECT count(*) FROM {table} WHERE email = ?", [gone]).fetchall() == [(0,)]
            assert store.con.execute("SELECT count(DISTINCT email) FROM held_values").fetchall() == [(2,)]
        assert gone.encode() not in (state / "state.duckdb").read_bytes()


CONSENT_MODEL = parse_model({"attributes": {"first_name": "string", "accepts_email_marketing": "boolean",
                                            "email_consent": "boolean", "sms_opt_in": "boolean"}})


@pytest.mark.parametrize("source, expected", [
    ("accepts_email_marketing", "accepts_email_marketing is a consent attribute "
                                "(privacy.yaml: consent.destinations.klaviyo); consent is never sent by a sync"),
    ("email_consent", "'email_consent' names a consent, subscription or opt-in value"),
])
def test_a_consent_source_is_refused_naming_both_files_and_the_entry(tmp_path, monkeypatch, source, expected):
    """Review item 6: a consent attribute (declared in the privacy file, or named like one) cannot be mapped
    to a destination field of any name: the gate decides who is sent, its value is never sent."""
    privacy = tmp_path / "privacy.yaml"
    privacy.write_text("consent:\n  destinations: {klaviyo: accepts_email_marketing}\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(privacy))
    path = tmp_path / "destinations.yaml"
    path.write_text(f"klaviyo: {{mappings: [{{from: first_name, to: first_name}}, {{from: {source}, to: marketing_ok}}]}}")
    klaviyo = KlaviyoDestination(None, KlaviyoSettings())
    with pytest.raises(MappingFileError) as err:
        destination_mappings(klaviyo, CONSENT_MODEL, path)
    message = str(err.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(f"destinations.yaml: klaviyo.mappings[1] (from: {source}, to: marketing_ok): ")
    assert expected in message
    path.write_text("klaviyo: {mappings: [{from: first_name, to: first_name}]}")  # other fields still map
    assert [m.source for m in destination_mappings(klaviyo, CONSENT_MODEL, path)] == ["first_name"]
