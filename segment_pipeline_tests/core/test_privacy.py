"""Issue 15 parts 1, 2, 4: suppression lists, consent gates, retention (core, in-process, small data).

Destinations are the stateful Klaviyo and dotdigital fakes (real HTTP servers on loopback) and
every destination's dry run; files are scanned byte by byte (and Parquet files by content, since
their pages are compressed).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from segment_pipeline.core.exports import csv_range, customer_match, daily_feed
from segment_pipeline.core.exports.segment_export import (
    MANIFEST_SUFFIX,
    SegmentExportRequest,
    export_key_prefix,
    export_segment,
    new_object_prefix,
)
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.model import parse_model
from segment_pipeline.core.privacy.config import PrivacyFileError, load_privacy, parse_privacy
from segment_pipeline.core.privacy.filters import privacy_counts, sendable_memberships
from segment_pipeline.core.privacy.retention import enforce_retention
from segment_pipeline.core.privacy.suppression import (
    QUARANTINE_TABLE,
    SUPPRESSION_TABLE,
    ensure_current,
    load_suppression,
    partition_path,
)
from segment_pipeline.core.sync.destinations.dotdigital import DotdigitalSettings
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoSettings
from segment_pipeline.core.sync.hashing import google_email_hash, meta_email_hash
from segment_pipeline.core.sync.runner import sync, sync_dotdigital, sync_klaviyo
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import profile, write_day
from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
from segment_pipeline_tests.fakes.helpers import dotdigital_client, klaviyo_client
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

DAY = dt.date(2026, 11, 3)
TODAY = dt.date(2026, 11, 4)
PLAIN = "suppressed.plain@gmail.com"  # on the plain list (written there with odd case and spaces)
HASHED = "suppressed.hashed@example.com"  # on the hashed list only
NEVER = "not.a.customer@example.com"  # on the plain list, never a customer
KEEP = ["ann@example.com", "bob@example.com"]
SEGMENTS = {"vip": "VIP", "news": "Newsletter"}
CONSENT_MODEL = """
attributes:
  first_name: string
  accepts_email_marketing: boolean
"""


def sha(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


def write_privacy(folder: Path, consent: str = "") -> Path:
    lists = folder / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "unsubscribed.csv").write_text(
        f"email,when\n  {PLAIN.upper()} ,2026-10-01\nnot-an-address,2026-10-02\n,2026-10-03\n{NEVER},2026-10-04\n")
    (lists / "partner.txt").write_text(f"{sha(HASHED).upper()}\nnot-a-hash\n\n")
    path = folder / "privacy.yaml"
    path.write_text(f"""
suppression:
  - {{name: unsubscribed, path: lists/unsubscribed.csv, column: email}}
  - {{name: partner, path: lists/partner.txt, hashed: true}}
{consent}
""")
    return path


def customers(wh: Warehouse, consent: dict[str, bool | None] | None = None) -> None:
    people = [*KEEP, PLAIN, HASHED]
    extra = (lambda e: {"accepts_email_marketing": consent.get(e)}) if consent is not None else (lambda e: {})
    write_day(wh, DAY, [profile(e, first_name=e.split("@")[0], **extra(e)) for e in people], SEGMENTS,
              {"vip": people, "news": [KEEP[0], PLAIN]})


@pytest.fixture
def privacy(tmp_path: Path, monkeypatch) -> Path:
    path = write_privacy(tmp_path / "config")
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(path))
    return path


def load(wh: Warehouse, path: Path, landing: Path | None = None):
    con = connect()
    try:
        return load_suppression(con, wh, load_privacy(path), landing or path.parent / "landing", TODAY)
    finally:
        con.close()


def parquet_text(path: Path) -> str:
    """Every value of a Parquet file as text (its pages are compressed: a byte scan sees nothing)."""
    con = connect()
    try:
        rows = con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()
        return json.dumps(rows, default=str)
    finally:
        con.close()


def stamps(*roots: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for root in roots for p in root.rglob("*") if p.is_file()}


def file_texts(root: Path, unchanged: dict[Path, int] | None = None):
    """(path, decoded content) of every file under ``root`` (except those in ``unchanged`` with the
    same modification time): Parquet by content, zip/gzip unpacked."""
    unchanged = unchanged or {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if unchanged.get(path) == path.stat().st_mtime_ns:
            continue
        raw = path.read_bytes()
        if raw[:4] == b"PAR1":
            yield path, parquet_text(path)
        elif raw[:2] == b"\x1f\x8b":
            yield path, gzip.decompress(raw).decode("utf-8", "replace")
        elif raw[:2] == b"PK":
            with zipfile.ZipFile(path) as zf:
                yield path, "".join(zf.read(n).decode("utf-8", "replace") for n in zf.namelist())
        else:
            yield path, raw.decode("utf-8", "replace")


def traces(email: str) -> dict[str, str]:
    """The address and its hashes (Google's differs from the plain SHA-256 for gmail.com addresses only)."""
    out = {"address": email, "sha256": meta_email_hash(email), "google_sha256": google_email_hash(email)}
    return out if out["google_sha256"] != out["sha256"] else {k: v for k, v in out.items() if k != "google_sha256"}


# -- the privacy file ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "message"), [
    ({"suppression": [{"name": "a b", "path": "x.csv"}]}, "privacy.yaml: suppression.0.name: list name 'a b' must be"),
    ({"suppression": [{"name": "a", "path": "x.csv", "source": "s"}]}, "suppression.0: give exactly one of path"),
    ({"suppression": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "suppression.1.name: list 'a' is declared twice"),
    ({"suppression": [{"name": "a", "path": "x", "colum": "e"}]}, "suppression.0.colum: Extra inputs"),
    ({"consent": {"destination": {}}}, "consent.destination: Extra inputs"),
])
def test_privacy_file_errors_name_the_file_and_the_entry(doc, message):
    with pytest.raises(PrivacyFileError) as err:
        parse_privacy(doc, "data/privacy.yaml")
    assert str(err.value).startswith("data/privacy.yaml: ") and message in str(err.value)


def test_a_consent_gate_needs_a_boolean_attribute_of_the_model(tmp_path):
    model = parse_model({"attributes": {"first_name": "string", "accepts_email_marketing": "boolean"}})
    ok = parse_privacy({"consent": {"destinations": {"klaviyo": "accepts_email_marketing"}}}, "p.yaml")
    ok.check_model(model)
    for attr, why in (("first_name", "of type string"), ("nope", "not an attribute of the data model")):
        bad = parse_privacy({"consent": {"segments": {"vip": attr}}}, "p.yaml")
        with pytest.raises(PrivacyFileError, match=f"p.yaml: consent.segments.vip: '{attr}' is {why}"):
            bad.check_model(model)
    assert load_privacy(tmp_path / "missing.yaml").suppression == []  # optional file: nothing declared


# -- loading -------------------------------------------------------------------------------------------------


def test_lists_are_loaded_as_hashes_only_and_malformed_entries_are_quarantined(tmp_path, privacy):
    wh = Warehouse(tmp_path / "warehouse")
    result = load(wh, privacy)
    lists = {k: vars(v) for k, v in result.lists.items()}
    assert lists == {"unsubscribed": {"entries": 2, "files": 1, "quarantined": 1, "blank": 1},
                     "partner": {"entries": 1, "files": 1, "quarantined": 1, "blank": 1}}
    con = connect()
    table = con.execute(f"SELECT list_name, email_sha256 FROM read_parquet('{partition_path(wh, SUPPRESSION_TABLE, TODAY)}')").fetchall()
    assert table == sorted([("partner", sha(HASHED)), ("unsubscribed", sha(NEVER)), ("unsubscribed", sha(PLAIN))])
    quarantine = con.execute(
        f"SELECT list_name, source_file, source_line, reason FROM read_parquet('{partition_path(wh, QUARANTINE_TABLE, TODAY)}')").fetchall()
    assert quarantine == [("partner", "partner.txt", 2, "not a SHA-256 hex digest (64 hex characters)"),
                          ("unsubscribed", "unsubscribed.csv", 3, "email: no @")]
    for path, text in file_texts(wh.root):  # no plain address, and no malformed value, at rest
        for needle in (PLAIN, NEVER, HASHED, "not-an-address", "not-a-hash"):
            assert needle not in text.lower(), (path, needle)
    assert oct(partition_path(wh, SUPPRESSION_TABLE, TODAY).stat().st_mode & 0o777) == "0o600"


def test_lists_from_a_folder_ndjson_parquet_and_a_landing_source(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    folder = tmp_path / "cfg" / "optouts"
    (folder / "2026").mkdir(parents=True)
    (folder / "a.ndjson").write_text(json.dumps({"mail": "A@Example.com"}) + "\n" + json.dumps({"other": 1})
                                     + "\n\n{broken\n[1]\n")
    con = connect()
    con.execute(f"COPY (SELECT 'b@example.com' AS mail) TO '{folder / '2026' / 'b.parquet'}' (FORMAT parquet)")
    (folder / ".hidden.csv").write_text("mail\nhidden@example.com\n")
    landing = tmp_path / "landing" / "suppression" / "date=2026-11-01"
    landing.mkdir(parents=True)
    (landing / "x.csv").write_text("email\nc@example.com\n")
    path = tmp_path / "cfg" / "privacy.yaml"
    path.write_text("suppression:\n  - {name: folder, path: optouts, column: mail}\n"
                    "  - {name: landing, source: suppression}\n")
    result = load(wh, path, tmp_path / "landing")
    assert {k: (v.entries, v.files, v.blank, v.quarantined) for k, v in result.lists.items()} == {
        "folder": (2, 2, 1, 3), "landing": (1, 1, 0, 0)}
    reasons = con.execute(f"SELECT source_file, source_line, reason FROM read_parquet("
                          f"'{partition_path(wh, QUARANTINE_TABLE, TODAY)}')").fetchall()
    assert reasons == [("a.ndjson", 2, "no value for key 'mail'"), ("a.ndjson", 4, "not valid JSON"),
                       ("a.ndjson", 5, "not a JSON object")]
    got = con.execute(f"SELECT list_name, email_sha256 FROM read_parquet('{result.location}')").fetchall()
    assert sorted(got) == sorted([("folder", sha("a@example.com")), ("folder", sha("b@example.com")),
                                  ("landing", sha("c@example.com"))])
    (landing / "y.csv").write_text("mail\nd@example.com\n")  # a file without the list's column fails, naming it
    with pytest.raises(PrivacyFileError, match="suppression list 'landing': date=2026-11-01/y.csv has no column 'email'"):
        load(wh, path, tmp_path / "landing")


def test_ensure_current_loads_once_a_day_and_again_when_a_list_changes(tmp_path, privacy):
    wh = Warehouse(tmp_path / "warehouse")
    con = connect()
    config = load_privacy(privacy)
    assert ensure_current(con, wh, config, tmp_path, TODAY) is not None
    assert ensure_current(con, wh, config, tmp_path, TODAY) is None  # current: not read again
    listed = privacy.parent / "lists" / "unsubscribed.csv"
    listed.write_text(listed.read_text() + "new@example.com\n")
    later = partition_path(wh, SUPPRESSION_TABLE, TODAY).stat().st_mtime + 5
    os.utime(listed, (later, later))
    assert ensure_current(con, wh, config, tmp_path, TODAY).lists["unsubscribed"].entries == 3
    # lists removed from the privacy file stop applying (an empty partition is in force)
    assert ensure_current(con, wh, parse_privacy({}), tmp_path, TODAY + dt.timedelta(days=1)) is not None
    assert sendable_memberships(wh, days=[DAY]).startswith("(SELECT m.* FROM")
    assert con.execute(f"SELECT count(*) FROM {sendable_memberships(wh, days=[DAY])}").fetchall() == [(0,)]


# -- a suppressed address appears in no file or payload ---------------------------------------------------------


def run_every_output(wh: Warehouse, storage: LocalExportStorage, tmp_path: Path, klaviyo, dotdigital) -> dict:
    con = connect()
    out = {"feed": daily_feed.write_daily_feed(con, wh, storage, DAY)}
    assert daily_feed.verify_daily_feed(con, wh, storage, DAY).passed
    request = SegmentExportRequest.parse({"segment_id": "vip", "fields_to_export": ["email", "first_name"]})
    out["export"] = export_segment(con, wh, storage, request, as_of=DAY, started_at=1793761200)
    out["csv"] = csv_range.write_segment_csv(con, wh, storage, "vip", DAY, DAY)
    out["customer_match"] = customer_match.write_customer_match(con, wh, storage, DAY, SEGMENTS)
    state, dry = tmp_path / "state", wh.root / "sync_dry_run"
    out["klaviyo"] = sync_klaviyo(wh, DAY, SEGMENTS, state_dir=state / "klaviyo", dry_run_root=dry,
                                  client=klaviyo_client(klaviyo.url), settings=KlaviyoSettings())
    out["dotdigital"] = sync_dotdigital(wh, DAY, SEGMENTS, state_dir=state / "dotdigital", dry_run_root=dry,
                                        client=dotdigital_client(dotdigital.url), settings=DotdigitalSettings())
    for name in ("klaviyo", "dotdigital", "braze", "meta"):  # every destination's dry run
        out[f"{name}_dry"] = sync(name, wh, DAY, SEGMENTS, state_dir=wh.root / "sync_state" / f"dry-{name}",
                                  dry_run_root=dry, client=None)
    return out


def test_a_suppressed_address_appears_in_no_file_or_payload(tmp_path, privacy):
    wh = Warehouse(tmp_path / "warehouse")
    storage = LocalExportStorage(tmp_path / "exports")
    customers(wh)  # the customers' own records (profiles, memberships) exist before the run
    load(wh, privacy)
    before = stamps(wh.root)
    with FakeKlaviyo() as klaviyo, FakeDotdigital() as dotdigital:
        klaviyo.keep_bodies = dotdigital.keep_bodies = True
        out = run_every_output(wh, storage, tmp_path, klaviyo, dotdigital)
        bodies = [(f"{name} {m} {p}", p + b.decode("utf-8", "replace"))
                  for name, fake in (("klaviyo", klaviyo), ("dotdigital", dotdigital)) for m, p, b in fake.bodies]
        assert klaviyo.property_of(KEEP[0], "nosto_segment") == ["Newsletter", "VIP"]
        assert all(dotdigital.field_value(e, "NOSTOSEGMENT") for e in KEEP)
    assert out["feed"].lines == 2 and out["export"].members == 2 and out["csv"].rows == 2
    assert {f.segment_id: f.rows for f in out["customer_match"].files} == {"news": 1, "vip": 2}
    assert out["klaviyo"].upserted == 2 and out["dotdigital"].upserted == 2 and out["meta_dry"].upserted == 3
    assert any(b for _, b in bodies)
    # every file the run wrote under the warehouse and export roots, and every request body and path
    scanned = list(file_texts(wh.root, before)) + list(file_texts(storage.root)) + bodies
    assert any(KEEP[0] in text for _, text in scanned) and any(meta_email_hash(KEEP[0]) in t for _, t in scanned)
    assert any("sync_dry_run/meta" in str(w) for w, _ in scanned) and any("sync_state" in str(w) for w, _ in scanned)
    for kind, needle in traces(NEVER).items():  # listed, never a customer: nowhere at all but as a hash
        found = [str(w) for w, text in list(file_texts(wh.root)) + list(file_texts(storage.root)) + bodies
                 if needle in text.lower()]
        assert all(f"/{SUPPRESSION_TABLE}/" in w for w in found) if kind == "sha256" else found == [], (kind, found)
    for email in (PLAIN, HASHED):
        for kind, needle in traces(email).items():
            found = [str(where) for where, text in scanned if needle in text.lower()]
            if kind == "sha256":  # the hash may exist only in the suppression table
                assert all(f"/{SUPPRESSION_TABLE}/" in w for w in found), (email, found)
            else:
                assert found == [], (email, kind, found)
    for m in ("feed", "export", "csv"):  # also not in the feed's pointer, the manifests, the dry-run summaries
        assert PLAIN not in json.dumps(vars(out[m]), default=str)


def test_a_contact_synced_before_suppression_leaves_the_klaviyo_list_and_the_dotdigital_book(tmp_path, privacy,
                                                                                             monkeypatch):
    wh = Warehouse(tmp_path / "warehouse")
    customers(wh)
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", "none")  # first: no list yet
    state = tmp_path / "state"
    with FakeKlaviyo() as klaviyo, FakeDotdigital() as dotdigital:

        def run():
            k = sync_klaviyo(wh, DAY, SEGMENTS, state_dir=state / "k", dry_run_root=tmp_path / "dry",
                             client=klaviyo_client(klaviyo.url), settings=KlaviyoSettings())
            d = sync_dotdigital(wh, DAY, SEGMENTS, state_dir=state / "d", dry_run_root=tmp_path / "dry",
                                client=dotdigital_client(dotdigital.url), settings=DotdigitalSettings())
            (list_id,) = klaviyo.lists_named("Nosto Customers")
            (book,) = dotdigital.books_named("Nosto Customers")
            return k, d, klaviyo.member_emails(list_id), dotdigital.book_members(book)

        k, d, in_list, in_book = run()
        assert {PLAIN, HASHED} <= in_list and {PLAIN, HASHED} <= in_book and k.upserted == d.upserted == 4
        monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(privacy))
        load(wh, privacy)
        k, d, in_list, in_book = run()
        assert in_list == set(KEEP) and in_book == set(KEEP)
        assert (k.removed, k.cleared, d.removed, d.cleared) == (2, 2, 2, 2)
        for email in (PLAIN, HASHED):  # removed from the list/book and the property cleared, the contact kept
            assert klaviyo.profile(email) is not None and klaviyo.property_of(email, "nosto_segment") in (None, [])
            assert email in dotdigital.contacts and dotdigital.field_value(email, "NOSTOSEGMENT") in (None, "")
        assert dotdigital.spec_violations == [] and klaviyo.spec_violations == []
        assert dotdigital.consent_attempts == [] and klaviyo.consent_attempts == []
        k, d, in_list, in_book = run()  # and they stay out: nothing left to do
        assert (k.upserted, k.removed, k.cleared, d.upserted, d.removed, d.cleared) == (0, 0, 0, 0, 0, 0)


def test_privacy_counts_per_list(tmp_path, privacy):
    wh = Warehouse(tmp_path / "warehouse")
    customers(wh)
    load(wh, privacy)
    con = connect()
    assert privacy_counts(con, wh, days=[DAY]) == {"suppressed": {"partner": 1, "unsubscribed": 1}}
    assert privacy_counts(con, wh, days=[DAY], segment_ids=["news"]) == {"suppressed": {"partner": 0, "unsubscribed": 1}}


# -- consent gates --------------------------------------------------------------------------------------------


CONSENT = {"ann@example.com": True, "bob@example.com": False, PLAIN: None, HASHED: True}


def consent_warehouse(tmp_path: Path, monkeypatch, gates: str) -> Warehouse:
    wh = Warehouse(tmp_path / "warehouse", model=parse_model(__import__("yaml").safe_load(CONSENT_MODEL)))
    customers(wh, CONSENT)
    path = tmp_path / "privacy.yaml"
    path.write_text(gates)
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(path))
    return wh


def test_consent_gate_on_a_destination(tmp_path, monkeypatch):
    wh = consent_warehouse(tmp_path, monkeypatch, "consent:\n  destinations: {klaviyo: accepts_email_marketing}\n")
    with FakeKlaviyo() as klaviyo, FakeDotdigital() as dotdigital:
        klaviyo.keep_bodies = dotdigital.keep_bodies = True
        k = sync_klaviyo(wh, DAY, SEGMENTS, state_dir=tmp_path / "k", dry_run_root=tmp_path / "dry",
                         client=klaviyo_client(klaviyo.url), settings=KlaviyoSettings())
        d = sync_dotdigital(wh, DAY, SEGMENTS, state_dir=tmp_path / "d", dry_run_root=tmp_path / "dry",
                            client=dotdigital_client(dotdigital.url), settings=DotdigitalSettings())
        (list_id,) = klaviyo.lists_named("Nosto Customers")
        assert klaviyo.member_emails(list_id) == {"ann@example.com", HASHED}  # false and unknown are not sent
        assert k.upserted == 2 and d.upserted == 4  # dotdigital has no gate
        sent = b"".join(b for fake in (klaviyo, dotdigital) for _m, _p, b in fake.bodies).lower()
        assert b"accepts_email_marketing" not in sent and b"consent" not in sent  # consent itself is never sent
        assert klaviyo.consent_attempts == [] and dotdigital.consent_attempts == []
    con = connect()
    assert privacy_counts(con, wh, days=[DAY], destination="klaviyo") == {"consent_withheld": 2}
    assert privacy_counts(con, wh, days=[DAY], destination="dotdigital") == {}


def test_consent_gate_on_a_segment_applies_to_every_export_and_sync(tmp_path, monkeypatch):
    wh = consent_warehouse(tmp_path, monkeypatch, "consent:\n  segments: {news: accepts_email_marketing}\n")
    storage = LocalExportStorage(tmp_path / "exports")
    con = connect()
    daily_feed.write_daily_feed(con, wh, storage, DAY)
    feed = {json.loads(line)["email"]: json.loads(line)["nosto_segments"]
            for line in storage.get_bytes(daily_feed.daily_key("nosto_segments", DAY)).decode().splitlines()}
    # PLAIN (consent unknown) is in "news" but not sent as such; everyone stays in the ungated "vip"
    assert feed == {"ann@example.com": ["Newsletter", "VIP"], "bob@example.com": ["VIP"], PLAIN: ["VIP"],
                    HASHED: ["VIP"]}
    csv = csv_range.write_segment_csv(con, wh, storage, "news", DAY, DAY)
    assert storage.get_bytes(csv.key).decode().split("\r\n")[1:] == ["ann@example.com,2026-11-03,2026-11-03", ""]
    report = sync("klaviyo", wh, DAY, SEGMENTS, state_dir=tmp_path / "s", dry_run_root=tmp_path / "dry", client=None)
    assert report.desired == 4  # every identity is still sent for "vip"
    payload = b"".join(p.read_bytes() for p in Path(report.payload_dir).glob("upsert-*"))
    assert payload.count(b"Newsletter") == 1
    assert privacy_counts(con, wh, days=[DAY], segment_ids=["news"]) == {"consent_withheld": 1}


# -- retention ---------------------------------------------------------------------------------------------------


def test_retention_removes_exactly_what_is_older_than_each_setting_and_reports_it(tmp_path):
    now = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    landing, wh_root = tmp_path / "landing", tmp_path / "warehouse"
    storage = LocalExportStorage(tmp_path / "exports")
    for day in ("2026-11-09", "2026-11-10", "2026-11-11"):  # 10 days: the 10th is the oldest kept
        (landing / "profiles" / f"date={day}").mkdir(parents=True)
        (landing / "profiles" / f"date={day}" / "a.csv").write_text("email\nx@example.com\n")
        for table in ("quarantine_profiles", "quarantine_events"):
            (wh_root / table / f"date={day}").mkdir(parents=True)
            (wh_root / table / f"date={day}" / "data.parquet").write_bytes(b"PAR1....PAR1")
        (wh_root / "raw_profiles" / f"date={day}").mkdir(parents=True)
        (wh_root / "raw_profiles" / f"date={day}" / "data.parquet").write_bytes(b"x")  # never retention's
    for stamp in ("20261112T235959000000Z", "20261113T000000000000Z"):
        (wh_root / "sync_dry_run" / "klaviyo" / stamp).mkdir(parents=True)
        (wh_root / "sync_dry_run" / "klaviyo" / stamp / "upsert-00001.json").write_text("{}")
    for day in ("2026-11-01", "2026-11-02", "2026-11-19"):
        storage.put_bytes(daily_feed.daily_key("nosto_segments", day), b"{}\n")
    storage.put_bytes(daily_feed.latest_key("nosto_segments"),  # the pointer names an old file: it is kept
                      json.dumps({"date": "2026-11-02", "key": daily_feed.daily_key("nosto_segments", "2026-11-02")}).encode())
    old, fresh = "customer_match/2026-11-01/vip.csv", "csv/vip/2026-11-01_2026-11-19.csv"
    storage.put_bytes(old, b"Email\nabc\n")
    storage.put_bytes(fresh, b"email\n")
    os.utime(storage.path(old), ((now - dt.timedelta(days=6)).timestamp(),) * 2)
    os.utime(storage.path(fresh), ((now - dt.timedelta(days=4)).timestamp(),) * 2)

    kept_all = enforce_retention(wh_root, landing, storage, {}, now)
    assert all(r.removed == 0 for r in kept_all.kinds.values())
    assert kept_all.kinds["landing"].oldest_kept == "2026-11-09"

    result = enforce_retention(wh_root, landing, storage,
                               {"landing": 10, "quarantine": 9, "dry_run": 7, "published": 5}, now)
    meta = result.metadata()
    assert meta["landing"] == {"days": 10, "removed": 1, "bytes": 20, "oldest_kept": "2026-11-10"}
    assert sorted(p.name for p in (landing / "profiles").iterdir()) == ["date=2026-11-10", "date=2026-11-11"]
    assert meta["quarantine"] == {"days": 9, "removed": 4, "bytes": 48, "oldest_kept": "2026-11-11"}
    assert sorted(p.name for p in (wh_root / "raw_profiles").iterdir()) == [
        "date=2026-11-09", "date=2026-11-10", "date=2026-11-11"]
    assert meta["dry_run"] == {"days": 7, "removed": 1, "bytes": 2, "oldest_kept": "2026-11-13"}
    assert [p.name for p in (wh_root / "sync_dry_run" / "klaviyo").iterdir()] == ["20261113T000000000000Z"]
    assert meta["published"]["removed"] == 2 and meta["published"]["bytes"] == 3 + 10
    assert sorted(result.kinds["published"].removed_items) == [old, daily_feed.daily_key("nosto_segments", "2026-11-01")]
    assert storage.exists(daily_feed.daily_key("nosto_segments", "2026-11-02")) and storage.exists(fresh)
    assert meta["published"]["oldest_kept"] == "2026-11-02"
    assert not list(tmp_path.rglob(".tmp-*"))  # folders were renamed away, then removed: no leftovers
    again = enforce_retention(wh_root, landing, storage, {"landing": 10, "quarantine": 9, "dry_run": 7, "published": 5},
                              now)
    assert all(r.removed == 0 for r in again.kinds.values())


def test_published_retention_expires_a_segment_export_as_a_unit_and_keeps_each_segments_newest(tmp_path):
    now = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    storage = LocalExportStorage(tmp_path / "exports")

    def export(segment: str, started_days_ago: int, chunks_age: int, manifest_age: int | None) -> str:
        prefix = export_key_prefix(segment, new_object_prefix((now - dt.timedelta(days=started_days_ago)).timestamp()))
        keys = [f"{prefix}/chunk-{i}.zip" for i in range(2)]
        for key in keys:
            storage.put_bytes(key, b"12345")
            os.utime(storage.path(key), ((now - dt.timedelta(days=chunks_age)).timestamp(),) * 2)
        if manifest_age is not None:  # None: a crashed export, no manifest
            storage.put_bytes(prefix + MANIFEST_SUFFIX, json.dumps({"files": keys}).encode())
            os.utime(storage.path(prefix + MANIFEST_SUFFIX), ((now - dt.timedelta(days=manifest_age)).timestamp(),) * 2)
        return prefix

    vip_old = export("vip", 20, 20, 20)
    vip_newest = export("vip", 9, 9, 9)  # older than the setting, but the newest of its segment
    news_long = export("news", 8, 8, 2)  # its chunks look old, its manifest (finished 2 days ago) does not
    news_newest = export("news", 1, 1, 1)
    crashed = export("news", 12, 12, None)

    expected_bytes = sum(storage.size(k) for k in storage.list_keys("segment-export") if k.startswith((vip_old, crashed)))
    result = enforce_retention(tmp_path / "warehouse", tmp_path / "landing", storage, {"published": 5}, now)
    published = result.kinds["published"]
    assert sorted(published.removed_items) == sorted([vip_old, crashed])  # one item per export
    assert published.removed == 2 and published.bytes == expected_bytes
    left = storage.list_keys("segment-export")
    for prefix in (vip_newest, news_long, news_newest):  # every kept export is whole: manifest and chunks
        assert {prefix + MANIFEST_SUFFIX, f"{prefix}/chunk-0.zip", f"{prefix}/chunk-1.zip"} <= set(left)
    assert not [k for k in left if k.startswith((vip_old, crashed))]
    assert not storage.path(vip_old).exists() and not storage.path(crashed).exists()  # no empty folders left
    assert published.oldest_kept == (now - dt.timedelta(days=9)).isoformat(timespec="seconds")


def test_the_api_identity_index_treats_a_suppressed_address_as_unknown(tmp_path, privacy):
    from segment_pipeline.core.api_identity import IdentityIndex

    wh = Warehouse(tmp_path / "warehouse")
    customers(wh)
    index = IdentityIndex(wh, wh.root / "api_state" / "identity_index", recheck_seconds=0)
    assert index.lookup(PLAIN, DAY) is not None  # before the lists are loaded
    load(wh, privacy)  # the index is rebuilt: the load in force is part of its fingerprint
    assert index.lookup(PLAIN, DAY) is None and index.lookup(HASHED, DAY) is None
    assert [s["id"] for s in index.lookup(KEEP[0], DAY)["segments"]] == ["news", "vip"]
    for path, text in file_texts(wh.root / "api_state"):
        assert PLAIN not in text and HASHED not in text, path


def test_the_beauty_shop_privacy_file_is_valid_against_its_model():
    root = Path(__file__).resolve().parents[2] / "examples" / "beauty_shop"
    from segment_pipeline.core.model import load_model

    config = load_privacy(root / "privacy.yaml", load_model(root / "model.yaml"))
    assert config.consent_for_destination("klaviyo") == "accepts_email_marketing" and config.suppression == []


def test_a_failed_contact_lookup_names_the_endpoint_not_the_address():
    from segment_pipeline.core.esp.dotdigital import DotdigitalClient
    from segment_pipeline.core.esp.http import EspError
    from segment_pipeline_tests.fakes.helpers import FAST

    with FakeDotdigital() as dotdigital:
        dotdigital.seed_contact("jane@example.com")
        client = dotdigital_client(dotdigital.url)
        assert client.contact_id("jane@example.com") == dotdigital.contacts["jane@example.com"]["id"]
        assert client.contact_id("nobody@example.com") is None
        bad = DotdigitalClient("wrong-user", "wrong-password", base_url=dotdigital.url, policy=FAST)
        with pytest.raises(EspError) as err:
            bad.contact_id("jane@example.com")
        assert "jane" not in str(err.value) and "/v2/contacts/<address>" in str(err.value) and err.value.status == 401


def test_sigkill_mid_removal_then_rerun_still_removes_the_suppressed(tmp_path, privacy, monkeypatch):
    from segment_pipeline_tests.fakes.helpers import kill_when, start_sync_child

    wh = Warehouse(tmp_path / "warehouse")
    customers(wh)
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", "none")
    state = tmp_path / "state"
    with FakeDotdigital() as dotdigital:
        sync_dotdigital(wh, DAY, SEGMENTS, state_dir=state, dry_run_root=state / "dry",
                        client=dotdigital_client(dotdigital.url), settings=DotdigitalSettings())
        (book,) = dotdigital.books_named("Nosto Customers")
        assert {PLAIN, HASHED} <= dotdigital.book_members(book)
        monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(privacy))
        load(wh, privacy)
        proc = start_sync_child("dotdigital", dotdigital.url, wh.root, state, DAY.isoformat(), SEGMENTS)
        # killed once the book removal arrived, before the child could record it in its mirror
        kill_when(dotdigital, proc, lambda: any(r.path.endswith("/contacts/delete") for r in dotdigital.log),
                  "the child's address book removal")
        report = sync_dotdigital(wh, DAY, SEGMENTS, state_dir=state, dry_run_root=state / "dry",
                                 client=dotdigital_client(dotdigital.url), settings=DotdigitalSettings())
        assert report.removed == 2  # sent again (removal is idempotent) and now recorded
        assert dotdigital.book_members(book) == set(KEEP) and {PLAIN, HASHED} <= set(dotdigital.contacts)
        again = sync_dotdigital(wh, DAY, SEGMENTS, state_dir=state, dry_run_root=state / "dry",
                                client=dotdigital_client(dotdigital.url), settings=DotdigitalSettings())
        assert (again.removed, again.cleared, again.upserted) == (0, 0, 0)
        assert dotdigital.spec_violations == [] and dotdigital.consent_attempts == []
