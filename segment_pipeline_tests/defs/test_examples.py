"""Both shipped examples end to end, as a user runs them: landing files -> raw tables -> profiles ->
memberships -> daily feed (the ``daily_segments`` job of the code location, one in-process run over
the sample's days) -> Klaviyo and dotdigital sync dry runs.

The apparel demo (``data/``) runs with the default settings; the second shop
(``examples/beauty_shop``: a Shopify customer CSV export and a Segment-spec stream) runs with the
environment its README gives (``SEGMENT_PIPELINE_MODEL/SOURCES/SEGMENTS/LANDING/WAREHOUSE``). Its
memberships are checked against answers read straight from the committed sample files with plain
Python (``csv``/``json``: an oracle independent of the pipeline), pinned to the numbers they give.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_pipeline import settings
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.landing import copy_sample_days

PROJECT = Path(settings.PROJECT_ROOT)
BEAUTY = PROJECT / "examples" / "beauty_shop"
BEAUTY_DAYS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
APPAREL_DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
SYNC_ENV = ("KLAVIYO_API_KEY", "DOTDIGITAL_API_USER", "DOTDIGITAL_API_PASSWORD")


# SEGMENT_PIPELINE_END_DATE is left as it is: the daily partitions are defined once per process
# (defs/partitions.py, at import), and by default they run through yesterday, past both samples.


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


@contextmanager
def environment(values: dict[str, str]):
    """Set (and afterwards restore) environment variables: a user's shell for one example."""
    saved = {k: os.environ.get(k) for k in [*values, *SYNC_ENV]}
    try:
        for k in SYNC_ENV:  # no credentials: the syncs dry-run
            os.environ.pop(k, None)
        os.environ.update(values)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_example(env: dict[str, str], first: str, last: str, instance: dg.DagsterInstance) -> dg.Definitions:
    """The code location loaded in ``env``; its daily_segments job over first..last, then both syncs."""
    from segment_pipeline.definitions import defs as load_defs

    defs = load_defs()
    result = defs.resolve_job_def("daily_segments").execute_in_process(
        instance=instance, tags=range_tags(first, last))
    assert result.success
    syncs = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("klaviyo_sync"), dg.AssetKey("dotdigital_sync")})
    assert syncs.execute_in_process(instance=instance).success
    return defs


def latest_metadata(instance: dg.DagsterInstance, key: str) -> dict[str, dict]:
    """Partition (or "" when unpartitioned) -> the latest materialization's metadata values."""
    out: dict[str, dict] = {}
    for rec in sorted(instance.fetch_materializations(dg.AssetKey(key), limit=1000).records,
                      key=lambda r: r.storage_id):
        mat = rec.asset_materialization
        out[mat.partition or ""] = {k: v.value for k, v in mat.metadata.items()}
    return out


def members(wh: Warehouse, day: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for seg, email in duckdb.connect().execute(
            f"SELECT segment_id, email FROM {wh.scan('memberships', days=[day])}").fetchall():
        out[seg].add(email)
    return out


def feed_lines(exports: Path, day: str) -> dict[str, list[str]]:
    (path,) = (exports / "daily").glob(f"*/{day}.json")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {line["email"]: next(v for k, v in line.items() if k != "email") for line in lines}


def check_dry_runs(instance: dg.DagsterInstance, wh: Warehouse, day: str, catalog_path: Path) -> None:
    """Each destination dry-ran the day's members of its synced segments (one contact each, all new)."""
    from segment_pipeline.core.segments import load_catalog

    catalog = load_catalog(catalog_path)
    got = members(wh, day)
    for name in ("klaviyo", "dotdigital"):
        (meta,) = latest_metadata(instance, f"{name}_sync").values()
        synced = [s.id for s in catalog.segments if s.sync.get(name)]
        assert meta["dry_run"] is True and meta["day"] == day and meta["requests"] == 0
        assert meta["upserted"] == len(set().union(*(got[s] for s in synced))) > 0, name
        assert any(Path(meta["payload_dir"]).rglob("*")), name


# -- the apparel demo ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apparel(tmp_path_factory):
    root = tmp_path_factory.mktemp("apparel")
    copy_sample_days(root / "landing", APPAREL_DAYS)
    env = {"SEGMENT_PIPELINE_LANDING": str(root / "landing"), "SEGMENT_PIPELINE_WAREHOUSE": str(root / "warehouse"),
           "SEGMENT_PIPELINE_EXPORT_DIR": str(root / "exports")}
    with environment(env):
        for var in ("SEGMENT_PIPELINE_MODEL", "SEGMENT_PIPELINE_SOURCES", "SEGMENT_PIPELINE_SEGMENTS"):
            os.environ.pop(var, None)  # the defaults: data/model.yaml, data/sources.yaml, data/segments.yaml
        instance = dg.DagsterInstance.ephemeral()
        run_example(env, APPAREL_DAYS[0], APPAREL_DAYS[-1], instance)
        yield instance, Warehouse(root / "warehouse"), root


def test_apparel_demo_runs_from_landing_files_to_feed_and_sync_dry_runs(apparel):
    instance, wh, root = apparel
    last = APPAREL_DAYS[-1]
    got = members(wh, last)
    for seg in ("prospects", "first_time_buyer", "nike_fans", "geo_germany", "utm_instagram"):
        assert got[seg], seg
    con = duckdb.connect()
    identities = con.execute(f"SELECT count(*) FROM {wh.scan('profiles', days=[last])}").fetchone()[0]
    feed = feed_lines(root / "exports", last)
    assert len(feed) == identities > 500
    some = sorted(got["geo_germany"])[0]
    assert "geo-area Germany" in feed[some]
    assert con.execute(f"SELECT count(*) FROM {wh.scan('quarantine_events')}").fetchone()[0] > 0
    check_dry_runs(instance, wh, last, PROJECT / "data" / "segments.yaml")


# -- the second shop: an oracle read from the committed files --------------------------------------


def _valid_email(text: str) -> str | None:
    e = (text or "").strip().lower()
    local, _, domain = e.partition("@")
    return e if local and "." in domain and "@" not in domain and " " not in e else None


def shopify_latest(days: list[str]) -> dict[str, dict]:
    """email -> the latest valid export row (days in order, rows in file order); a row whose points are
    not an integer is rejected, as is one without a valid email."""
    latest: dict[str, dict] = {}
    for day in days:
        with (BEAUTY / "landing" / "shopify_customers" / f"date={day}" / "customers_export.csv").open(
                newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                email = _valid_email(row["Email"])
                points = row["Loyalty Points (customer.metafields.loyalty.points)"]
                if email and (points == "" or points.isdigit()):
                    latest[email] = row
    return latest


def segment_messages(days: list[str]) -> list[dict]:
    out = []
    for day in days:
        path = BEAUTY / "landing" / "segment_stream" / f"date={day}" / f"segment-{day}.ndjson"
        out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return out


def beauty_oracle(days: list[str]) -> dict[str, set[str]]:
    rows = shopify_latest(days)
    msgs = segment_messages(days)
    user_email = {m["userId"]: m["traits"]["email"].lower() for m in msgs if m["type"] == "identify"}
    seen: set[str] = set()
    tracks: dict[str, list[dict]] = defaultdict(list)
    for m in msgs:
        if m["type"] == "track" and m["messageId"] not in seen and m.get("userId") in user_email:
            seen.add(m["messageId"])
            tracks[user_email[m["userId"]]].append(m)
    tags = {e: {t.strip() for t in r["Tags"].split(",") if t.strip()} for e, r in rows.items()}

    def count(email: str, event: str) -> int:
        return sum(1 for m in tracks[email] if m["event"] == event)

    basket = {e for e, ms in tracks.items()
              if sum(round(m["properties"]["revenue"] * 100) for m in ms if m["event"] == "Order Completed") >= 10000}
    only_glow = {e for e, ms in tracks.items()
                 if (brands := [p["brand"] for m in ms if m["event"] == "Order Completed"
                                for p in m["properties"]["products"]]) and set(brands) == {"Glow Lab"}}
    any_glow = {e for e, ms in tracks.items()
                if any(p["brand"] == "Glow Lab" for m in ms if m["event"] == "Order Completed"
                       for p in m["properties"]["products"])}
    return {
        "oily_skin": {e for e, r in rows.items() if r["Skin Type (customer.metafields.custom.skin_type)"] == "oily"},
        "points_500": {e for e, r in rows.items()
                       if r["Loyalty Points (customer.metafields.loyalty.points)"].isdigit()
                       and int(r["Loyalty Points (customer.metafields.loyalty.points)"]) >= 500},
        "vip_tagged": {e for e, t in tags.items() if "VIP" in t},
        "trade_accounts": {e for e, t in tags.items() if t & {"wholesale", "influencer"}},
        "active_subscribers": {e for e in tracks
                               if count(e, "Subscription Started") and not count(e, "Subscription Cancelled")},
        "email_engaged": {e for e, r in rows.items()
                          if r["Accepts Email Marketing"] == "yes" and count(e, "Email Opened") >= 2},
        "basket_100_30d": basket,
        "glow_lab_only": only_glow,
        "glow_lab_any": any_glow,
        "identified": set(user_email.values()),
    }


#: What the committed sample gives (regenerate it with the command in examples/beauty_shop/README.md).
PINNED_SIZES = {"oily_skin": 60, "points_500": 85, "vip_tagged": 31, "trade_accounts": 41, "active_subscribers": 29,
                "email_engaged": 43, "basket_100_30d": 52, "glow_lab_only": 11, "glow_lab_any": 38, "identified": 254}


def test_the_oracle_pins_the_committed_sample():
    """Hand-checkable facts of the sample the membership test relies on: if the sample changes,
    these say so first. (Antoine Durand, Paris, oily skin: 499 points, one short of points_500.)"""
    o = beauty_oracle(BEAUTY_DAYS)
    assert {k: len(v) for k, v in o.items()} == PINNED_SIZES
    assert "a_durand75@icloud.com" in o["oily_skin"] and "a_durand75@icloud.com" not in o["points_500"]
    assert {"amelia.anderson188@hotmail.com", "amelia.garcia156@icloud.com"} <= o["points_500"]
    assert {"avagarcia168@outlook.com", "d_garcia189@gmail.com"} <= o["active_subscribers"]
    assert {"a_davis162@hotmail.com", "a_visser289@gmail.com"} <= o["vip_tagged"]


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    root = tmp_path_factory.mktemp("beauty")
    shutil.copytree(BEAUTY / "landing", root / "landing")
    env = {
        "SEGMENT_PIPELINE_MODEL": str(BEAUTY / "model.yaml"),
        "SEGMENT_PIPELINE_SOURCES": str(BEAUTY / "sources.yaml"),
        "SEGMENT_PIPELINE_SEGMENTS": str(BEAUTY / "segments.yaml"),
        "SEGMENT_PIPELINE_LANDING": str(root / "landing"),
        "SEGMENT_PIPELINE_WAREHOUSE": str(root / "warehouse"),
        "SEGMENT_PIPELINE_EXPORT_DIR": str(root / "exports"),
    }
    with environment(env):
        instance = dg.DagsterInstance.ephemeral()
        run_example(env, BEAUTY_DAYS[0], BEAUTY_DAYS[-1], instance)
        yield instance, Warehouse(root / "warehouse"), root, env


def test_beauty_shop_memberships_match_the_sample_read_by_hand(beauty):
    _, wh, _, _ = beauty
    last = BEAUTY_DAYS[-1]
    got, want = members(wh, last), beauty_oracle(BEAUTY_DAYS)
    for seg in ("oily_skin", "points_500", "vip_tagged", "trade_accounts", "active_subscribers", "email_engaged",
                "basket_100_30d"):
        assert got[seg] == want[seg], seg
        assert want[seg], f"{seg}: the sample should give it members"
    # affinity on a list property (brands of an order's products): all-Glow-Lab buyers are in,
    # buyers who never bought Glow Lab are out
    assert want["glow_lab_only"] <= got["glow_lab_buyers"] <= want["glow_lab_any"]
    assert got["oily_skin_serum_push"] <= got["oily_skin"]


def test_beauty_shop_quarantines_unresolved_identities_and_duplicates_and_keeps_the_rest(beauty):
    instance, wh, _, _ = beauty
    con = duckdb.connect()

    def reasons(table: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for reason, n in con.execute(f"SELECT reason, count(*) FROM {wh.scan(table)} GROUP BY ALL").fetchall():
            out[reason] += n
        return out

    events, profiles = reasons("quarantine_events"), reasons("quarantine_profiles")
    # per day: two track calls of a userId no identify ever names; one Shopify row (phone only) whose
    # Customer ID no record links
    assert sum(n for r, n in events.items() if "unresolved identity" in r) == 2 * len(BEAUTY_DAYS)
    assert sum(n for r, n in profiles.items() if "unresolved identity" in r) == len(BEAUTY_DAYS)
    # per day: one retried track call (same messageId) kept once
    assert sum(n for r, n in events.items() if "duplicate" in r) == len(BEAUTY_DAYS)
    # per day: an email without a top-level domain, and "1,250" in the integer points column
    assert sum(n for r, n in profiles.items() if r.startswith("email")) == len(BEAUTY_DAYS)
    assert sum(n for r, n in profiles.items() if "loyalty_points" in r) == len(BEAUTY_DAYS)

    msgs = segment_messages(BEAUTY_DAYS)
    # track calls carry only the userId: attributed through the identify calls' links
    raw = dict(con.execute(f"SELECT event_id, email FROM {wh.scan('raw_events')}").fetchall())
    user_email = {m["userId"]: m["traits"]["email"] for m in msgs if m["type"] == "identify"}
    tracked = [m for m in msgs if m["type"] == "track" and m["userId"] in user_email]
    assert all(raw[m["messageId"]] == user_email[m["userId"]] for m in tracked)
    # ... including those sent before the user's identify call of the same day
    first_identify = {}
    for i, m in enumerate(msgs):
        if m["type"] == "identify":
            first_identify.setdefault(m["userId"], i)
    early = [m for i, m in enumerate(msgs) if m["type"] == "track" and i < first_identify.get(m["userId"], -1)]
    assert early and all(raw[m["messageId"]] == user_email[m["userId"]] for m in early)
    # an undeclared event name is kept, its properties untyped (JSON)
    wish = con.execute(f"SELECT count(*), count(properties) FROM {wh.scan('raw_events')} "
                       "WHERE event = 'Product Added to Wishlist'").fetchone()
    n_wish = sum(1 for m in msgs if m.get("event") == "Product Added to Wishlist")
    assert wish == (n_wish, n_wish) and n_wish > 0
    # a list property from a JSON path: the brands of an order's products
    order = next(m for m in tracked if m["event"] == "Order Completed" and len(m["properties"]["products"]) > 1)
    (brands,) = con.execute(f"SELECT brands FROM {wh.scan('raw_events')} WHERE event_id = ?",
                            [order["messageId"]]).fetchone()
    assert brands == [p["brand"] for p in order["properties"]["products"]]


def test_beauty_shop_keeps_unmapped_columns_and_counts_them(beauty):
    instance, wh, _, _ = beauty
    con = duckdb.connect()
    unmapped = ("Default Address Company", "Default Address Zip", "Total Spent", "Total Orders", "Note", "Tax Exempt")
    row = con.execute(f"SELECT custom_attributes FROM {wh.scan('raw_profiles')} "
                      "WHERE custom_attributes LIKE '%Prefers fragrance-free%' LIMIT 1").fetchone()
    assert row is not None, "the Note column's text is kept in custom_attributes"
    assert "Note" in json.loads(row[0])
    days = latest_metadata(instance, "raw_profiles")
    assert sorted(days) == BEAUTY_DAYS
    for day, meta in days.items():
        text = json.dumps(meta, default=str)
        for column in unmapped:
            assert column in text, (day, column)  # each run's metadata lists the unmapped columns ...
        (counts,) = [v["shopify_customers"] for v in meta.values()
                     if isinstance(v, dict) and "Tax Exempt" in (v.get("shopify_customers") or {})]
        for column in ("Default Address Zip", "Total Spent", "Total Orders", "Tax Exempt"):  # never empty
            assert 0 < counts[column] <= meta["rows_read"], (day, column)  # ... with their counts
    # every folder of the example has a source: neither kind reports one as unread (the events run
    # once named the profiles-only folder "without a source")
    for key in ("raw_profiles", "raw_events"):
        for day, meta in latest_metadata(instance, key).items():
            assert meta["folders_without_source"] == [], (key, day)


def test_beauty_shop_feed_lists_each_identity_with_its_segment_names(beauty):
    instance, wh, root, _ = beauty
    last = BEAUTY_DAYS[-1]
    feed = feed_lines(root / "exports", last)
    identities = duckdb.connect().execute(f"SELECT count(*) FROM {wh.scan('profiles', days=[last])}").fetchone()[0]
    assert len(feed) == identities
    oily = sorted(members(wh, last)["oily_skin"])
    assert oily and all("Oily skin" in feed[e] for e in oily)
    check_dry_runs(instance, wh, last, BEAUTY / "segments.yaml")


def test_a_late_identify_attributes_an_unresolved_event_when_its_day_is_rerun(tmp_path):
    """Segment's pattern: a track call with only a userId on day 1 is quarantined as unresolved; the
    identify call linking that userId to an email lands on day 3. Day 3's run names day 1
    (``resolves_earlier_days``), the late_links_sensor requests day 1 through day 3, and that re-run
    attributes the event: day 3's profile counts it."""
    from segment_pipeline.defs.automation.sensors import RANGE_END, RANGE_START, late_links_sensor

    first, third = BEAUTY_DAYS[0], BEAUTY_DAYS[2]
    landing = tmp_path / "landing"
    for source in ("shopify_customers", "segment_stream"):
        for day in BEAUTY_DAYS[:3]:
            shutil.copytree(BEAUTY / "landing" / source / f"date={day}", landing / source / f"date={day}")
    track = {"anonymousId": "0f3e2d1c-0000-4000-a000-000000000001", "context": {"library": {"name": "analytics.js"}},
             "event": "Product Viewed", "integrations": {}, "messageId": "ajs-next-late-link-0001",
             "originalTimestamp": f"{first}T09:00:00.000Z", "properties": {"product_id": "BEA-00001",
                                                                         "brand": "Glow Lab", "price": 24.99},
             "receivedAt": f"{first}T09:00:01.000Z", "sentAt": f"{first}T09:00:00.000Z",
             "timestamp": f"{first}T09:00:00.000Z", "type": "track", "userId": "usr_latecomer01"}
    (landing / "segment_stream" / f"date={first}" / "app-batch-1.ndjson").write_text(json.dumps(track) + "\n")
    env = {
        "SEGMENT_PIPELINE_MODEL": str(BEAUTY / "model.yaml"), "SEGMENT_PIPELINE_SOURCES": str(BEAUTY / "sources.yaml"),
        "SEGMENT_PIPELINE_SEGMENTS": str(BEAUTY / "segments.yaml"), "SEGMENT_PIPELINE_LANDING": str(landing),
        "SEGMENT_PIPELINE_WAREHOUSE": str(tmp_path / "warehouse"), "SEGMENT_PIPELINE_EXPORT_DIR": str(tmp_path / "x"),
    }
    with environment(env), dg.instance_for_test() as instance:
        from segment_pipeline.definitions import defs as load_defs

        definitions = load_defs()
        job = definitions.resolve_job_def("daily_segments")
        wh = Warehouse(tmp_path / "warehouse")
        con = duckdb.connect()

        def attributed() -> tuple[str | None, int]:
            email = con.execute(f"SELECT any_value(email) FROM {wh.scan('raw_events', days=[first])} "
                                "WHERE event_id = 'ajs-next-late-link-0001'").fetchone()[0]
            held = con.execute(f"SELECT count(*) FROM {wh.scan('quarantine_events', days=[first])} "
                               "WHERE reason LIKE '%unresolved identity%' AND raw LIKE '%usr_latecomer01%'").fetchone()[0]
            return email, held

        def late_links(cursor: str | None):
            with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions) as context:
                return late_links_sensor.evaluate_tick(context)

        assert job.execute_in_process(instance=instance, tags=range_tags(first, third)).success
        assert attributed() == (None, 1)
        quiet = late_links(None)
        assert not quiet.run_requests and "no earlier days" in quiet.skip_message

        # the identify call lands on day 3 (the landing sensor re-runs day 3)
        identify = {"anonymousId": track["anonymousId"], "context": {"library": {"name": "analytics-node"}},
                    "integrations": {}, "messageId": "late-identify-0001", "originalTimestamp": f"{third}T10:00:00.000Z",
                    "receivedAt": f"{third}T10:00:01.000Z", "sentAt": f"{third}T10:00:00.000Z",
                    "timestamp": f"{third}T10:00:00.000Z", "traits": {"email": "Late.Comer@Example.com"},
                    "type": "identify", "userId": "usr_latecomer01"}
        (landing / "segment_stream" / f"date={third}" / "crm-backfill.ndjson").write_text(json.dumps(identify) + "\n")
        result = job.execute_in_process(instance=instance, partition_key=third)
        assert result.success
        (mat,) = [m for m in result.asset_materializations_for_node("ingest_profiles")
                  if m.asset_key == dg.AssetKey("raw_profiles")]
        assert mat.metadata["resolves_earlier_days"].value == {first: 1}
        assert attributed() == (None, 1)  # day 1 is not rewritten until it is re-run

        # the automation requests day 1 through day 3, once
        tick = late_links(quiet.cursor)
        (request,) = tick.run_requests
        assert (request.tags[RANGE_START], request.tags[RANGE_END]) == (first, third)
        assert job.execute_in_process(instance=instance, tags=request.tags).success
        assert attributed() == ("late.comer@example.com", 0)
        views = con.execute(f"SELECT views_30d FROM {wh.scan('profiles', days=[third])} "
                            "WHERE email = 'late.comer@example.com'").fetchone()
        assert views == (1,)
        after = late_links(tick.cursor)  # the re-run's own day 3 names nothing: no second run
        assert not after.run_requests
        replay = late_links(None)  # from no cursor: day 1 was ingested again since, nothing to run
        assert not replay.run_requests and "ingested again since" in replay.skip_message


def test_demo_example_option_points_every_setting_at_the_example_and_keeps_what_is_set(monkeypatch):
    from segment_pipeline.demo import use_example

    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.delenv("DAGSTER_HOME")
    for var in ("MODEL", "SOURCES", "SEGMENTS", "LANDING", "WAREHOUSE", "EXPORT_DIR", "END_DATE", "PRIVACY",
                "DESTINATIONS"):
        # set, then delete: monkeypatch then restores the variable's original state (unset included)
        # after the test, undoing what use_example sets; a bare delenv of an unset variable records
        # nothing, and the example's settings leaked into every later test of the process
        monkeypatch.setenv(f"SEGMENT_PIPELINE_{var}", "")
        monkeypatch.delenv(f"SEGMENT_PIPELINE_{var}")
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", "elsewhere")
    lines = use_example("beauty_shop")
    assert os.environ["SEGMENT_PIPELINE_MODEL"] == str(BEAUTY / "model.yaml")
    assert os.environ["SEGMENT_PIPELINE_SOURCES"] == str(BEAUTY / "sources.yaml")
    assert os.environ["SEGMENT_PIPELINE_LANDING"] == str(BEAUTY / "landing")
    assert os.environ["SEGMENT_PIPELINE_EXPORT_DIR"] == str(BEAUTY / "exports")
    assert os.environ["SEGMENT_PIPELINE_WAREHOUSE"] == "elsewhere"  # already set: kept
    assert os.environ["SEGMENT_PIPELINE_END_DATE"] == BEAUTY_DAYS[-1]  # this process only: no .env written
    # its own privacy file and no field mappings: never the apparel demo's data/privacy.yaml, data/destinations.yaml
    assert os.environ["SEGMENT_PIPELINE_PRIVACY"] == str(BEAUTY / "privacy.yaml")
    assert os.environ["SEGMENT_PIPELINE_DESTINATIONS"] == "none"
    assert "SEGMENT_PIPELINE_DESTINATIONS=none" in lines and "SEGMENT_PIPELINE_PRIVACY=" in (BEAUTY / ".env").read_text()
    assert len(lines) == 9
    assert os.environ["DAGSTER_HOME"] == str(BEAUTY / ".dagster_home")  # its own instance
