"""GET /segments/export and GET /identities/{email} over real HTTP: auth, ETag, gzip, dates."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys

import httpx

from segment_pipeline.core.exports.daily_feed import daily_key
from segment_pipeline.core.feed_auth import CredentialStore
from segment_pipeline_tests.api.conftest import DAY, NEXT
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import profile, write_day
from segment_pipeline_tests.waiting import child_env


def feed_lines(body: bytes) -> dict[str, list[str]]:
    return {row["email"]: row["nosto_segments"] for row in map(json.loads, body.decode().splitlines())}


def test_latest_feed_streams_ndjson_with_basic_auth(env, client):
    r = client.get("/segments/export", auth=("nosto", env.feed_token))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["x-export-date"] == NEXT.isoformat()
    assert r.content == env.storage.path(daily_key("nosto_segments", NEXT)).read_bytes()
    assert feed_lines(r.content) == {
        "jane@example.com": ["Nike fans", "VIP"],
        "joe@example.com": ["Hostile 'name', ü"],
        "ann@example.com": ["VIP"],
    }
    plain = client.get("/segments/export", auth=("nosto", env.feed_token), headers={"Accept-Encoding": "identity"})
    assert int(plain.headers["content-length"]) == len(plain.content) == len(r.content)


def test_earlier_date_and_bad_or_missing_dates(env, client):
    auth = ("nosto", env.feed_token)
    r = client.get("/segments/export", params={"date": DAY.isoformat()}, auth=auth)
    assert r.status_code == 200 and feed_lines(r.content) == {"jane@example.com": ["VIP"], "joe@example.com": []}
    assert client.get("/segments/export", params={"date": "2020-01-01"}, auth=auth).status_code == 404
    for bad in ("2026-13-01", "yesterday", "2026-11-03/../../x", "../../etc/passwd"):
        r = client.get("/segments/export", params={"date": bad}, auth=auth)
        assert r.status_code == 400, bad
        assert "YYYY-MM-DD" in r.json()["message"]


def test_wrong_or_missing_credentials_are_401_without_detail(env, client):
    attempts = [
        None,
        ("nosto", "wrong"),
        ("other", env.feed_token),  # right token, wrong identifier
        ("nosto", env.feed_token + "x"),
        ("nosto", env.api_key),  # an API key is not a feed token
    ]
    bodies = set()
    for auth in attempts:
        r = client.get("/segments/export", auth=auth)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
        bodies.add(r.text)
    assert bodies == {'{"message":"unauthorized"}'}
    garbage = client.get("/segments/export", headers={"Authorization": "Basic %%%not-base64"})
    assert garbage.status_code == 401 and garbage.text == '{"message":"unauthorized"}'
    bearer = client.get("/segments/export", headers={"Authorization": f"Bearer {env.feed_token}"})
    assert bearer.status_code == 401


def test_revoked_token_stops_working_without_restart(env, client):
    store = CredentialStore(env.state)
    _, second = store.create_feed_token("nosto")
    assert client.get("/segments/export", auth=("nosto", second)).status_code == 200
    assert store.revoke(env.feed_token_id) is not None
    assert client.get("/segments/export", auth=("nosto", env.feed_token)).status_code == 401
    assert client.get("/segments/export", auth=("nosto", second)).status_code == 200


def test_etag_and_if_none_match(env, client):
    auth = ("nosto", env.feed_token)
    first = client.get("/segments/export", auth=auth)
    etag = first.headers["etag"]
    again = client.get("/segments/export", auth=auth, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = client.get("/segments/export", auth=auth, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200
    older = client.get("/segments/export", auth=auth, params={"date": DAY.isoformat()})
    assert older.headers["etag"] != etag
    # re-running the day replaces the file: a new ETag
    from segment_pipeline_tests.api.conftest import publish

    write_day(env.warehouse, NEXT, [profile("jane@example.com")], {"vip": "VIP"}, {"vip": ["jane@example.com"]})
    publish(env.warehouse, env.storage, NEXT)
    changed = client.get("/segments/export", auth=auth, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert feed_lines(changed.content) == {"jane@example.com": ["VIP"]}


def test_gzip_when_asked(env, server):
    auth = ("nosto", env.feed_token)
    with httpx.Client(base_url=server) as raw:
        plain = raw.get("/segments/export", auth=auth, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        with raw.stream("GET", "/segments/export", auth=auth, headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["content-encoding"] == "gzip"
            assert r.headers["vary"] == "Accept-Encoding"
            compressed = b"".join(r.iter_raw())
        assert gzip.decompress(compressed) == plain.content
        etag = r.headers["etag"]
        assert etag != plain.headers["etag"]
        assert raw.get("/segments/export", auth=auth,
                       headers={"Accept-Encoding": "gzip", "If-None-Match": etag}).status_code == 304
        refused = raw.get("/segments/export", auth=auth, headers={"Accept-Encoding": "gzip;q=0"})
        assert "content-encoding" not in refused.headers


def test_no_feed_published_yet(env, client):
    env.storage.delete("daily/nosto_segments/latest")
    r = client.get("/segments/export", auth=("nosto", env.feed_token))
    assert r.status_code == 404 and "no daily export" in r.json()["message"]


def test_identity_lookup_latest_and_dated(env, client):
    auth = ("nosto", env.feed_token)
    r = client.get("/identities/jane@example.com", auth=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["date"] == NEXT.isoformat() and body["email"] == "jane@example.com"
    assert body["segments"] == [{"id": "nike", "name": "Nike fans"}, {"id": "vip", "name": "VIP"}]
    dated = client.get("/identities/jane@example.com", params={"date": DAY.isoformat()}, auth=auth).json()
    assert dated["segments"] == [{"id": "vip", "name": "VIP"}]
    # known identity in no segment: 200 with an empty list; unknown: 404
    joe = client.get("/identities/joe@example.com", params={"date": DAY.isoformat()}, auth=auth).json()
    assert joe["segments"] == []
    assert client.get("/identities/nobody@example.com", auth=auth).status_code == 404
    assert client.get("/identities/ann@example.com", params={"date": DAY.isoformat()}, auth=auth).status_code == 404
    assert client.get("/identities/jane@example.com", params={"date": "2020-01-01"}, auth=auth).status_code == 404


def test_identity_email_normalized_like_ingestion(env, client):
    headers = {"Authorization": f"Bearer {env.api_key}"}  # API keys work too
    r = client.get("/identities/%20%20JANE@Example.COM%20", headers=headers)
    assert r.status_code == 200 and r.json()["email"] == "jane@example.com"
    # a leading zero-width space and a trailing NBSP are stripped, as ingestion strips them
    invisible = client.get("/identities/%E2%80%8BJane@Example.com%C2%A0", headers=headers)
    assert invisible.status_code == 200 and invisible.json()["email"] == "jane@example.com"
    # what ingestion quarantines is no identity: 400, not 404
    assert [client.get(f"/identities/{bad}", headers=headers).status_code
            for bad in ("vera..w@example.org", "user@domain.c", "ja%E2%80%8Bne@example.com")] == [400] * 3
    hostile = client.get("/identities/joe@example.com", headers=headers).json()
    assert hostile["segments"] == [{"id": "../x", "name": "Hostile 'name', ü"}]
    assert client.get("/identities/not-an-email", headers=headers).status_code == 400
    assert client.get("/identities/x@example.com'; DROP TABLE identities; --", headers=headers).status_code == 400
    assert client.get("/identities/x'or'1'='1@example.com", headers=headers).status_code == 404
    assert client.get("/identities/jane@example.com", headers=headers).status_code == 200
    assert client.get("/identities/jane@example.com").status_code == 401


def test_identity_index_follows_a_rerun_of_the_day(env, client):
    auth = ("nosto", env.feed_token)
    assert client.get("/identities/ann@example.com", auth=auth).status_code == 200
    write_day(env.warehouse, NEXT, [profile("jane@example.com")], {"vip": "VIP"}, {"vip": ["jane@example.com"]})
    assert client.get("/identities/ann@example.com", auth=auth).status_code == 404
    assert client.get("/identities/jane@example.com", auth=auth).json()["segments"] == [{"id": "vip", "name": "VIP"}]


def test_logs_mask_emails_and_hold_no_secrets(env, client, caplog):
    caplog.set_level(logging.INFO, logger="segment_pipeline.api")
    client.get("/identities/jane@example.com", auth=("nosto", env.feed_token))
    client.get("/identities/nobody@example.com", auth=("nosto", env.feed_token))
    client.get("/segments/export", auth=("nosto", "wrong-token"))
    client.get("/segments/export", auth=("nosto", env.feed_token))
    text = caplog.text
    assert "j***@example.com" in text and "n***@example.com" in text
    assert "jane@example.com" not in text and "nobody@example.com" not in text
    assert env.feed_token not in text and "wrong-token" not in text
    assert f"cred={env.feed_token_id}" in text


def test_tokens_cli_creates_lists_and_revokes(env, client):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "segment_pipeline.cli", *args], capture_output=True, text=True,
                              env=child_env())

    created = cli("tokens", "create", "--identifier", "partner_x", "--note", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("spf_") and "partner_x" in created.stderr
    assert client.get("/segments/export", auth=("partner_x", token)).status_code == 200
    listing = cli("tokens", "list").stdout
    token_id = token.split("_")[1]
    assert token_id in listing and "partner_x" in listing and token not in listing
    stored = (env.state / "credentials.json").read_text()
    assert token not in stored and token.split("_", 2)[2] not in stored
    assert (env.state / "credentials.json").stat().st_mode & 0o077 == 0
    assert cli("tokens", "revoke", token_id).returncode == 0
    assert client.get("/segments/export", auth=("partner_x", token)).status_code == 401
    assert cli("tokens", "revoke", "0000000000").returncode == 1

    key = cli("api-keys", "create", "--name", "braze").stdout.strip()
    assert key.startswith("spk_")
    assert client.get("/identities/jane@example.com", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert cli("api-keys", "revoke", key.split("_")[1]).returncode == 0
    assert client.get("/identities/jane@example.com", headers={"Authorization": f"Bearer {key}"}).status_code == 401
