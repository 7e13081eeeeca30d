"""Tests for the deterministic sample-data generator (segment_pipeline.core.generate)."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import hashlib
import io
import json
import re
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from segment_pipeline import cli
from segment_pipeline.core import generate as generate_module
from segment_pipeline.core.generate import (
    EVENT_FIELDS,
    EVENT_TYPES,
    FORMATS,
    PROFILE_FIELDS,
    generate,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "landing"
# The committed sample is exactly the output of the documented command
#   segment-pipeline generate --profiles 3000 --days 14 --seed 42 --start 2026-11-01 \
#       --out data/landing --format ndjson
SAMPLE_ARGS = dict(profiles=3000, days=14, seed=42, start="2026-11-01", fmt="ndjson")

SMALL = dict(profiles=400, days=5, seed=7, start="2026-11-01", events_per_profile=3.0, malformed_rate=0.02)
START = dt.date(2026, 11, 1)

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
PROFILE_NAMES = [f for f, _ in PROFILE_FIELDS]
EVENT_NAMES = [f for f, _ in EVENT_FIELDS]


# --------------------------------------------------------------------------------------------
# reading and validating landing files the way an ingester would


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def read_records(path: Path) -> list[dict | str]:
    """Records of one file; a str item is a line/row that could not be parsed into a record."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ndjson":
        out: list[dict | str] = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append(line)
        return out
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    return [
        ",".join(r) if len(r) != len(header) else {k: (v if v != "" else None) for k, v in zip(header, r, strict=True)}
        for r in body
    ]


def parse_ts(value) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.strptime(value, TS_FORMAT)
    except ValueError:
        return None


def norm_email(value: str) -> str:
    return value.strip().lower()


def profile_problem(rec: dict | str, day: dt.date) -> str | None:
    if isinstance(rec, str):
        return "structural"
    if rec.get("email") is None:
        return "missing_email"
    if not EMAIL_RE.match(norm_email(rec["email"])):
        return "bad_email"
    if rec.get("updated_at") is None:
        return "missing_updated_at"
    ts = parse_ts(rec["updated_at"])
    if ts is None or ts.date() != day:
        return "bad_timestamp"
    if rec.get("created_at") is not None and parse_ts(rec["created_at"]) is None:
        return "bad_timestamp"
    return None


def _is_number(v) -> bool:
    if v is None or isinstance(v, (int, float)):
        return True
    try:
        Decimal(v)
        return True
    except ArithmeticError:
        return False


def event_problem(rec: dict | str, day: dt.date) -> str | None:
    if isinstance(rec, str):
        return "structural"
    if rec.get("event_id") is None:
        return "missing_event_id"
    if rec.get("email") is None or not EMAIL_RE.match(norm_email(rec["email"])):
        return "bad_email"
    if rec.get("event_type") not in EVENT_TYPES:
        return "unknown_event_type"
    ts = parse_ts(rec.get("occurred_at"))
    if ts is None or ts.date() != day:
        return "bad_timestamp"
    q = rec.get("quantity")
    if not _is_number(rec.get("price")) or not _is_number(rec.get("revenue")):
        return "wrong_type"
    if q is not None and not (isinstance(q, int) or (isinstance(q, str) and q.isdigit())):
        return "wrong_type"
    return None


def normalize(rec: dict, fields: list[str]) -> tuple:
    """Format-independent view of a valid record: every field as str or None."""
    out = []
    for f in fields:
        v = rec.get(f)
        if v is None:
            out.append(None)
        elif f in ("price", "revenue"):
            out.append(str(Decimal(str(v)).quantize(Decimal("0.01"))))
        else:
            out.append(str(v))
    return tuple(out)


class Landing:
    """Parsed contents of a landing folder."""

    def __init__(self, root: Path, fmt: str, days: int):
        self.root, self.fmt, self.days = root, fmt, days
        self.profiles: list[tuple[dt.date, dict]] = []
        self.events: list[tuple[dt.date, dict]] = []
        self.bad_profiles: list[tuple[str, dict | str]] = []
        self.bad_events: list[tuple[str, dict | str]] = []
        #: key sets of the valid profile records as written (NDJSON leaves unset attributes out)
        self.profile_keys: list[frozenset[str]] = []
        self.explicit_nulls = 0  # NDJSON profile records with a key set to null
        for i in range(days):
            day = START + dt.timedelta(days=i)
            for kind, check, good, bad in (
                ("profiles", profile_problem, self.profiles, self.bad_profiles),
                ("events", event_problem, self.events, self.bad_events),
            ):
                path = root / kind / f"date={day}" / f"{kind}-{day}.{fmt}"
                for rec in read_records(path):
                    problem = check(rec, day)
                    if problem is None and kind == "profiles":
                        self.profile_keys.append(frozenset(rec))
                        self.explicit_nulls += fmt == "ndjson" and None in rec.values()
                        good.append((day, {f: rec.get(f) for f in PROFILE_NAMES}))
                    elif problem is None:
                        good.append((day, rec))
                    else:
                        bad.append((problem, rec))

    def signup_day(self) -> dict[str, dt.datetime]:
        """normalized email -> created_at of the customer's first record."""
        first: dict[str, dt.datetime] = {}
        for _, rec in self.profiles:
            if rec.get("created_at") is not None:
                e = norm_email(rec["email"])
                ts = parse_ts(rec["created_at"])
                first[e] = min(first.get(e, ts), ts)
        return first


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, tuple[dict, Landing]]:
    out = {}
    for fmt in FORMATS:
        root = tmp_path_factory.mktemp(f"small-{fmt}")
        summary = generate(root, fmt=fmt, **SMALL)
        out[fmt] = (summary, Landing(root, fmt, SMALL["days"]))
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict, Landing]:
    root = tmp_path_factory.mktemp("sample")
    summary = generate(root, **SAMPLE_ARGS)
    return root, summary, Landing(root, "ndjson", SAMPLE_ARGS["days"])


# --------------------------------------------------------------------------------------------
# layout and determinism


@pytest.mark.parametrize("fmt", FORMATS)
def test_layout_and_date_range(small, fmt):
    summary, landing = small[fmt]
    files = sorted(str(p.relative_to(landing.root)) for p in landing.root.rglob("*") if p.is_file())
    expected = sorted(
        f"{kind}/date={day}/{kind}-{day}.{fmt}"
        for kind in ("profiles", "events")
        for day in (START + dt.timedelta(days=i) for i in range(SMALL["days"]))
    )
    assert files == expected
    assert summary["files"] == len(expected)
    assert summary["bytes"] == sum((landing.root / f).stat().st_size for f in files)


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_same_bytes(small, tmp_path, fmt):
    first_summary, landing = small[fmt]
    summary = generate(tmp_path, fmt=fmt, **SMALL)
    assert tree_hash(tmp_path) == tree_hash(landing.root)
    assert {k: v for k, v in summary.items() if k not in ("seconds", "out_dir")} == {
        k: v for k, v in first_summary.items() if k not in ("seconds", "out_dir")
    }


def test_rerun_overwrites_in_place(small, tmp_path):
    _, landing = small["ndjson"]
    day = START + dt.timedelta(days=1)
    victim = tmp_path / "events" / f"date={day}" / f"events-{day}.ndjson"
    victim.parent.mkdir(parents=True)
    victim.write_text("stale\n")
    generate(tmp_path, fmt="ndjson", **SMALL)
    # the stale file is replaced and no temporary files are left behind
    assert tree_hash(tmp_path) == tree_hash(landing.root)


def test_different_seed_differs(small, tmp_path):
    other = tmp_path / "other"
    generate(other, fmt="ndjson", **{**SMALL, "seed": 8})
    _, landing = small["ndjson"]
    for kind in ("profiles", "events"):
        day = START + dt.timedelta(days=2)
        name = f"{kind}/date={day}/{kind}-{day}.ndjson"
        assert (other / name).read_bytes() != (landing.root / name).read_bytes()


# --------------------------------------------------------------------------------------------
# content


@pytest.mark.parametrize("fmt", FORMATS)
def test_summary_counts_match_files(small, fmt):
    summary, landing = small[fmt]
    assert summary["profile_rows"] == len(landing.profiles) + len(landing.bad_profiles)
    assert summary["event_rows"] == len(landing.events) + len(landing.bad_events)
    assert summary["malformed_profile_rows"] == len(landing.bad_profiles)
    assert summary["malformed_event_rows"] == len(landing.bad_events)


def test_required_fields_and_vocabularies(sample):
    _, _, landing = sample
    for day, rec in landing.profiles:
        assert set(rec) == set(PROFILE_NAMES)
        assert rec["gender"] in ("female", "male", "other", None)
        assert rec["loyalty_tier"] in ("bronze", "silver", "gold", None)
        if rec["dob"] is not None:
            dt.date.fromisoformat(rec["dob"])
        if rec["customer_id"] is not None:
            assert re.fullmatch(r"C\d{6,}", rec["customer_id"])
        if rec["phone"] is not None:
            assert re.fullmatch(r"\+\d{9,14}", rec["phone"])
        assert parse_ts(rec["updated_at"]).date() == day
    event_ids = collections.Counter()
    for _, rec in landing.events:
        assert set(rec) == set(EVENT_NAMES)
        event_ids[rec["event_id"]] += 1
        kind = rec["event_type"]
        if kind == "page_view":
            assert rec["product_id"] is None and rec["price"] is None
        else:
            assert rec["product_id"] and rec["brand"] and rec["category"] and rec["price"] is not None
        if kind in ("add_to_cart", "order"):
            assert isinstance(rec["quantity"], int) and rec["quantity"] >= 1
        if kind == "order":
            assert rec["order_id"]
            assert Decimal(str(rec["revenue"])) == Decimal(str(rec["price"])) * rec["quantity"]
        else:
            assert rec["revenue"] is None and rec["order_id"] is None
    all_ids = [r.get("event_id") for _, r in landing.bad_events if isinstance(r, dict)]
    all_ids += list(event_ids)
    ids = [i for i in all_ids if i is not None]
    assert len(ids) == len(set(ids)), "event_id must be globally unique"
    assert max(event_ids.values()) == 1
    assert any(rec["brand"] == "Levi's" for _, rec in landing.events)


def test_geography_is_consistent_and_big_enough_for_segments(sample):
    _, _, landing = sample
    zones_by_country = collections.defaultdict(set)
    first_record: dict[str, dict] = {}
    for _, rec in landing.profiles:
        if rec["city"] is not None:
            assert rec["country"] is not None and rec["time_zone"] is not None
            zones_by_country[rec["country"]].add(rec["time_zone"])
        first_record.setdefault(norm_email(rec["email"]), rec)
    assert zones_by_country["DE"] == {"Europe/Berlin"}
    assert zones_by_country["GB"] == {"Europe/London"}
    assert "America/New_York" in zones_by_country["US"]
    germany = sum(1 for r in first_record.values() if r["country"] == "DE")
    new_york = sum(1 for r in first_record.values() if r["city"] == "New York")
    assert 200 <= germany <= 1200
    assert 150 <= new_york <= 600
    assert len(first_record) == SAMPLE_ARGS["profiles"]


def test_updates_and_email_variants(sample):
    _, _, landing = sample
    by_email = collections.defaultdict(list)
    for _, rec in landing.profiles:
        by_email[norm_email(rec["email"])].append(rec)
    variants = [r for recs in by_email.values() for r in recs if r["email"] != norm_email(r["email"])]
    assert len(variants) >= 20
    assert any(r["email"] != r["email"].strip() for r in variants), "surrounding spaces"
    assert any(r["email"].strip() != r["email"].strip().lower() for r in variants), "different case"
    for r in variants:
        assert len(by_email[norm_email(r["email"])]) >= 2, "a variant always belongs to a known customer"
    updated = [recs for recs in by_email.values() if len(recs) > 1]
    assert len(updated) >= 200
    partial = [r for recs in updated for r in recs[1:] if r.get("first_name") is None]
    assert any(r.get("city") is not None for r in partial)
    assert any(r.get("phone") is not None for r in partial)
    assert any(r.get("loyalty_tier") is not None for r in partial)
    # a partial update leaves out what it does not change (an explicit null would clear it)
    assert landing.explicit_nulls == 0
    assert all({"email", "updated_at"} <= keys <= set(PROFILE_NAMES) for keys in landing.profile_keys)
    assert any("first_name" not in keys and "city" in keys for keys in landing.profile_keys)
    for recs in updated:
        assert recs[0]["created_at"] == recs[0]["updated_at"], "first record is the signup"
        assert len({r["customer_id"] for r in recs} - {None}) <= 1
        assert all(r["updated_at"] > recs[0]["updated_at"] for r in recs[1:])


def test_malformed_rows_of_every_kind(small, sample):
    # small sample with a high rate, every format
    profile_kinds = {"bad_email", "missing_updated_at", "bad_timestamp", "missing_email"}
    event_kinds = {"bad_email", "missing_event_id", "bad_timestamp", "wrong_type", "unknown_event_type"}
    for fmt, (_, landing) in small.items():
        structural = set() if fmt == "parquet" else {"structural"}
        assert {k for k, _ in landing.bad_profiles} == profile_kinds | structural, fmt
        assert {k for k, _ in landing.bad_events} == event_kinds | structural, fmt
    # the committed-sample settings (default rate) still give a few of each kind
    _, summary, landing = sample
    assert {k for k, _ in landing.bad_profiles} == profile_kinds | {"structural"}
    assert {k for k, _ in landing.bad_events} == event_kinds | {"structural"}
    assert 10 <= summary["malformed_profile_rows"] <= 100
    assert 10 <= summary["malformed_event_rows"] <= 100
    not_json = [r for k, r in landing.bad_events if k == "structural"]
    assert all(r.startswith("{") for r in not_json)
    wrong = [r for k, r in landing.bad_events if k == "wrong_type"]
    assert all(r["quantity"] == "three" or r["price"] == "abc" for r in wrong)


def test_malformed_rows_are_additional(tmp_path, small):
    """Turning malformed rows off leaves exactly the same valid rows."""
    clean = tmp_path / "clean"
    generate(clean, fmt="ndjson", **{**SMALL, "malformed_rate": 0.0})
    landing = Landing(clean, "ndjson", SMALL["days"])
    assert not landing.bad_profiles and not landing.bad_events
    _, dirty = small["ndjson"]
    assert landing.profiles == dirty.profiles
    assert landing.events == dirty.events


def test_events_belong_to_existing_customers(sample):
    _, _, landing = sample
    signups = landing.signup_day()
    for day, rec in landing.events:
        created = signups.get(norm_email(rec["email"]))
        assert created is not None, rec
        assert created.date() <= day
        assert parse_ts(rec["occurred_at"]) >= created
    assert any(rec["email"] != norm_email(rec["email"]) for _, rec in landing.events)


def test_behaviour_mix(sample):
    _, summary, landing = sample
    orders = collections.Counter()
    brands = collections.defaultdict(collections.Counter)
    first_touch: dict[str, tuple[str, str | None]] = {}
    for _, rec in landing.events:
        e = norm_email(rec["email"])
        if rec["event_type"] == "order":
            orders[e] += 1
        if rec["brand"] is not None:
            brands[e][rec["brand"]] += 1
        if e not in first_touch or rec["occurred_at"] < first_touch[e][0]:
            first_touch[e] = (rec["occurred_at"], rec["utm_source"])
    customers = landing.signup_day()
    prospects = [e for e in customers if orders[e] == 0]
    one_time = [e for e in customers if orders[e] == 1]
    repeat = [e for e in customers if orders[e] >= 3]
    assert len(prospects) > len(customers) * 0.4
    assert len(one_time) > len(customers) * 0.1
    assert len(repeat) > len(customers) * 0.05
    # brand loyalty: customers' two top brands dominate their product interactions
    shares = [sum(n for _, n in c.most_common(2)) / sum(c.values()) for c in brands.values() if sum(c.values()) >= 5]
    assert sum(shares) / len(shares) > 0.7
    sources = collections.Counter(src for _, src in first_touch.values())
    assert sources.most_common(1)[0][0] == "instagram"
    assert sources["instagram"] / sum(sources.values()) > 0.2
    # average events per profile close to the requested 3
    assert 2.7 <= summary["event_rows"] / SAMPLE_ARGS["profiles"] <= 3.3
    # daily volume grows with the customer base but does not pile up on the last day
    per_day = collections.Counter(day for day, _ in landing.events)
    assert max(per_day.values()) < 5 * min(per_day.values())


def test_random_draws_are_independent():
    """Different salts / neighbouring keys give uncorrelated uniforms (multi-arg hash() would not)."""
    import duckdb

    sql = generate_module._Sql(42, 1000, 7, START, 3.0)
    row = duckdb.sql(
        f"""SELECT corr({sql.u(1, "p")}, {sql.u(2, "p")}), corr({sql.u(1, "p")}, {sql.u(1, "p + 1")}),
                   corr({sql.u(3, "p", 1)}, {sql.u(3, "p", 2)}), avg({sql.u(4, "p")}),
                   avg({sql.i(5, 10, "p", 7)})
            FROM range(100000) t(p)"""
    ).fetchall()[0]
    assert all(abs(c) < 0.02 for c in row[:3])
    assert row[3] == pytest.approx(0.5, abs=0.01)
    assert row[4] == pytest.approx(4.5, abs=0.05)


@pytest.mark.parametrize("epp", [0.0, 1.0, 5.0])
def test_events_per_profile_is_the_average(tmp_path, epp):
    summary = generate(tmp_path, 2000, 3, 5, "2026-11-01", "parquet", events_per_profile=epp, malformed_rate=0)
    assert summary["event_rows"] == pytest.approx(2000 * epp, rel=0.1, abs=0)


def test_formats_carry_the_same_logical_rows(small):
    views = {}
    for fmt, (summary, landing) in small.items():
        views[fmt] = (
            [normalize(r, PROFILE_NAMES) for _, r in landing.profiles],
            [normalize(r, EVENT_NAMES) for _, r in landing.events],
            summary["malformed_profile_rows"],
            summary["malformed_event_rows"],
        )
    assert views["csv"] == views["ndjson"]
    assert views["parquet"] == views["ndjson"]


def test_csv_is_rfc4180(small):
    _, landing = small["csv"]
    day = START + dt.timedelta(days=3)
    text = (landing.root / "profiles" / f"date={day}" / f"profiles-{day}.csv").read_text()
    assert text.splitlines()[0] == ",".join(PROFILE_NAMES)
    # values with surrounding spaces are quoted so no reader trims them
    assert re.search(r',"\s+\S+@\S+\s*",|,"\S+@\S+\s+",', text)


def test_parquet_columns_are_strings(small):
    _, landing = small["parquet"]
    day = START + dt.timedelta(days=1)
    schema = pq.read_schema(landing.root / "events" / f"date={day}" / f"events-{day}.parquet")
    assert schema.names == EVENT_NAMES
    assert {str(t) for t in schema.types} == {"string"}


# --------------------------------------------------------------------------------------------
# CLI and the committed sample


def test_cli_generate(tmp_path, capsys):
    code = cli.main(
        ["generate", "--profiles", "50", "--days", "2", "--seed", "1", "--out", str(tmp_path), "--format", "csv"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "4 files" in out and "malformed" in out
    assert (tmp_path / "events" / "date=2026-11-02" / "events-2026-11-02.csv").is_file()


def test_committed_sample_matches_generator(sample):
    """data/landing must be exactly what the documented command writes (guards against drift)."""
    root, _, _ = sample
    assert SAMPLE_DIR.is_dir(), "run: segment-pipeline generate --profiles 3000 --days 14 --seed 42 ..."
    committed = {p.relative_to(SAMPLE_DIR) for p in SAMPLE_DIR.rglob("*.ndjson")}
    fresh = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    assert committed == fresh
    for rel in sorted(fresh):
        assert (SAMPLE_DIR / rel).read_bytes() == (root / rel).read_bytes(), f"{rel} drifted: regenerate the sample"


# --------------------------------------------------------------------------------------------
# the second example's schema (examples/beauty_shop): Shopify customer CSV + Segment-spec NDJSON

BEAUTY_SAMPLE = REPO_ROOT / "examples" / "beauty_shop" / "landing"
# The committed sample is exactly the output of the command in examples/beauty_shop/README.md:
#   segment-pipeline generate --example beauty_shop --profiles 300 --days 4 --seed 11 \
#       --start 2026-11-01 --out examples/beauty_shop/landing
BEAUTY_ARGS = ["--example", "beauty_shop", "--profiles", "300", "--days", "4", "--seed", "11", "--start", "2026-11-01"]


def test_beauty_sample_is_the_generators_output(tmp_path):
    assert cli.main(["generate", *BEAUTY_ARGS, "--out", str(tmp_path / "a")]) == 0
    assert tree_hash(tmp_path / "a") == tree_hash(BEAUTY_SAMPLE)


def test_beauty_files_look_like_a_shopify_export_and_a_segment_stream(tmp_path):
    from segment_pipeline.core.generate_beauty import SHOPIFY_HEADER, generate_beauty

    summary = generate_beauty(tmp_path, profiles=120, days=3, seed=5, start="2026-11-01")
    assert summary["files"] == 6
    rows = []
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        with (tmp_path / "shopify_customers" / f"date={day}" / "customers_export.csv").open(newline="") as fh:
            reader = csv.reader(fh)
            assert next(reader) == SHOPIFY_HEADER
            rows += [dict(zip(SHOPIFY_HEADER, r, strict=True)) for r in reader]
    assert {r["Accepts Email Marketing"] for r in rows} == {"yes", "no"}
    assert any(r["Tags"] == "VIP, wholesale" for r in rows)
    assert any(r["Email"] == "" for r in rows)  # a phone-only customer
    msgs = [json.loads(line) for p in sorted((tmp_path / "segment_stream").rglob("*.ndjson"))
            for line in p.read_text().splitlines()]
    assert {m["type"] for m in msgs} == {"identify", "track"}
    for m in msgs:
        assert {"messageId", "anonymousId", "timestamp", "receivedAt", "sentAt", "originalTimestamp", "userId"} <= set(m)
        assert ("traits" in m) == (m["type"] == "identify") and ("event" in m) == (m["type"] == "track")
    events = collections.Counter(m.get("event") for m in msgs)
    assert {"Order Completed", "Product Viewed", "Email Opened", "Subscription Started",
            "Product Added to Wishlist"} <= set(events)
    ids = collections.Counter(m["messageId"] for m in msgs)
    assert sorted(ids.values())[-3:] == [2, 2, 2] and list(ids.values()).count(2) == 3  # one retry per day
    order = next(m for m in msgs if m.get("event") == "Order Completed")
    assert order["properties"]["products"] and all("brand" in p for p in order["properties"]["products"])
    # same arguments, same bytes
    generate_beauty(tmp_path / "again", profiles=120, days=3, seed=5, start="2026-11-01")
    for source in ("shopify_customers", "segment_stream"):
        assert tree_hash(tmp_path / "again" / source) == tree_hash(tmp_path / source)
