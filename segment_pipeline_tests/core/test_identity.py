"""Email identity: one normalization and validation, identical in ingestion (DuckDB SQL) and the API (Python)."""

from __future__ import annotations

import json
import random

import duckdb
import pytest

from segment_pipeline.core import api_identity
from segment_pipeline.core.identity import (
    FALLBACK,
    STRIP_CHARS,
    email_problem,
    normalize_email,
    normalize_sql,
    problem_sql,
    strip_sql,
)
from segment_pipeline.core.ingest import ingest_day
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import event, profile, write_ndjson

DAY = "2026-11-03"
NON_ASCII = "email: non-ASCII character (internationalized addresses are not supported; give IDN domains in punycode, xn--...)"

#: (raw email, normalized identity or None when invalid, reason when invalid)
CASES: list[tuple[str, str | None, str | None]] = [
    # valid, with the cleanup that makes them one identity
    ("anna@example.com", "anna@example.com", None),
    ("  Anna.Schmidt@Example.COM ", "anna.schmidt@example.com", None),
    ("\u200banna@example.com", "anna@example.com", None),             # leading zero-width space
    ("anna@example.com\t", "anna@example.com", None),                 # trailing tab
    ("anna@example.com\u00a0", "anna@example.com", None),             # trailing NBSP
    ("\ufeff\u2060anna@example.com\u200d\u200c\u3000", "anna@example.com", None),
    ("o'brien+news@example.ie", "o'brien+news@example.ie", None),
    ("{curly}@example.com", "{curly}@example.com", None),             # braces are atext
    ("a.b.c@sub.example.co.uk", "a.b.c@sub.example.co.uk", None),
    ("x@xn--bcher-kva.de", "x@xn--bcher-kva.de", None),               # IDN domain in punycode
    ("x@example.xn--p1ai", "x@example.xn--p1ai", None),               # punycode top-level domain
    ("a" * 64 + "@example.com", "a" * 64 + "@example.com", None),
    ("x@" + ("a" * 63 + ".") * 3 + "b" * 56 + ".com", "x@" + ("a" * 63 + ".") * 3 + "b" * 56 + ".com", None),  # 254
    # the examples
    ("user@domain.c", None, "email: top-level domain must be at least 2 letters"),
    ("vera..w@example.org", None, "email: consecutive dots"),
    (".walt@example.org", None, "email: local part starts with a dot"),
    ("xena.@example.org", None, "email: local part ends with a dot"),
    ("yann@-example.org", None, "email: domain label starts or ends with a hyphen"),
    ('["x@example.com"]', None, "email: a JSON array or object, not an address"),
    ('{"email": "x@example.com"}', None, "email: a JSON array or object, not an address"),
    ("x\x00@example.com", None, "email: control character"),
    ("an\u200bna@example.com", None, "email: white space or invisible character inside the address"),
    ("john doe@example.com", None, "email: white space or invisible character inside the address"),
    # more of each kind
    ("\u200b\u00a0", None, "email: only white space or invisible characters"),
    ("x@example.com\x1f", None, "email: control character"),
    ("not-an-email", None, "email: no @"),
    ("a@@b.com", None, "email: more than one @"),
    ("müller@example.de", None, NON_ASCII),
    ("x@bücher.de", None, NON_ASCII),
    ("@example.com", None, "email: empty local part (nothing before the @)"),
    ("anna.schmidt@", None, "email: empty domain (nothing after the @)"),
    ("a" * 65 + "@example.com", None, "email: local part longer than 64 characters"),
    ("x@" + ("a" * 63 + ".") * 3 + "b" * 57 + ".com", None, "email: longer than 254 characters"),
    ('"quoted"@example.com', None, "email: invalid character in the local part"),
    ("a(b)@example.com", None, "email: invalid character in the local part"),
    ("x@.example.com", None, "email: domain starts with a dot"),
    ("x@example.com.", None, "email: domain ends with a dot"),
    ("x@example..com", None, "email: consecutive dots"),
    ("x@exa_mple.com", None, "email: invalid character in the domain"),
    ("x@[192.168.0.1]", None, "email: invalid character in the domain"),
    ("x@localhost", None, "email: domain has no top-level domain (no dot)"),
    ("x@example-.com", None, "email: domain label starts or ends with a hyphen"),
    ("x@example.com-", None, "email: domain label starts or ends with a hyphen"),
    ("x@" + "a" * 64 + ".com", None, "email: domain label longer than 63 characters"),
    ("x@example.c0m", None, "email: top-level domain must be at least 2 letters"),
    ("x@example.123", None, "email: top-level domain must be at least 2 letters"),
    ("a-.b@x.c", None, "email: top-level domain must be at least 2 letters"),  # the local part's "-." is fine
]


def sql_results(values: list[str]) -> list[tuple[str | None, str | None]]:
    """(normalized when valid, reason) for each value, computed by the ingestion SQL in DuckDB."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, email VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    stripped = strip_sql("email")
    return [
        (norm if problem is None else None, problem)
        for norm, problem in con.execute(
            f"SELECT {normalize_sql(stripped)}, {problem_sql(stripped)} FROM t ORDER BY i"
        ).fetchall()
    ]


def py_result(value: str) -> tuple[str | None, str | None]:
    problem = email_problem(value)
    return (normalize_email(value) if problem is None else None, problem)


@pytest.mark.parametrize(("raw", "normalized", "reason"), CASES)
def test_python_rule(raw, normalized, reason):
    assert py_result(raw) == (normalized, reason)


def test_sql_rule_gives_the_same_answers_as_python():
    assert sql_results([raw for raw, _, _ in CASES]) == [(n, r) for _, n, r in CASES]


def test_sql_and_python_agree_on_random_strings():
    """Random strings over an alphabet of every character class the rules look at, and edits of the cases."""
    rng = random.Random(20261103)
    alphabet = list("aZ09.-_@+'\"[]{}( ") + ["\t", "\n", "\x00", "\x1f", "\x85", "\u2028", "\u200b", "\u00a0", "é", "\ufeff", "\u212a"]
    parts = ["xn--", "example", ".com", "@example.org", ".", "-", "a" * 60]
    values = []
    for _ in range(3000):
        pieces = [rng.choice(alphabet) if rng.random() < 0.7 else rng.choice(parts) for _ in range(rng.randint(0, 14))]
        values.append("".join(pieces))
    values += [raw.upper() for raw, _, _ in CASES]
    # and single edits (insert, replace, delete) of every case: the boundary between valid and not
    for raw, _, _ in CASES:
        for _ in range(30):
            i = rng.randint(0, len(raw))
            c = rng.choice(alphabet)
            values.append(rng.choice([raw[:i] + c + raw[i:], raw[:i] + c + raw[i + 1:], raw[:i] + raw[i + 1:]]))
    sql = sql_results(values)
    py = [py_result(v) for v in values]
    assert [(v, s) for v, s, p in zip(values, sql, py, strict=True) if s != p] == []
    assert FALLBACK not in {r for _, r in py}, "every invalid value gets a specific reason"
    assert sum(r is None for _, r in py) > 200  # the sample has valid addresses too


def test_strip_set_covers_unicode_white_space():
    for c in map(chr, range(0x110000)):
        if c.isspace() and not "\x1c" <= c <= "\x1f":  # Python's isspace adds the C0 separators
            assert c in STRIP_CHARS, hex(ord(c))
    for c in "\u200b\u200c\u200d\u2060\ufeff":
        assert c in STRIP_CHARS


def test_api_lookup_uses_the_ingestion_rule():
    assert api_identity.normalize_email is normalize_email
    assert api_identity.normalize_email("\u200b Jane@Example.COM\u00a0") == "jane@example.com"
    assert not api_identity.is_email("vera..w@example.org")
    assert api_identity.is_email("\u200bjane@example.com")


def test_ingestion_quarantines_each_case_and_keeps_one_identity(tmp_path):
    """Profiles and events through real landing files: valid cases become one identity each."""
    wh = Warehouse(tmp_path / "wh")
    write_ndjson(tmp_path, "profiles", DAY, [profile(raw, "2026-11-03T08:00:00Z") for raw, _, _ in CASES])
    write_ndjson(tmp_path, "events", DAY, [
        event(f"e{i}", raw, "page_view", "2026-11-03T09:00:00Z") for i, (raw, _, _) in enumerate(CASES)
    ])
    con = connect(preserve_order=True)
    for kind in ("profiles", "events"):
        report = ingest_day(con, wh, tmp_path, kind, DAY)
        assert report.rows_quarantined == sum(r is not None for _, _, r in CASES)
        table = "raw_profiles" if kind == "profiles" else "raw_events"
        valid = con.execute(f"SELECT source_line, email FROM {wh.scan(table)} ORDER BY 1").fetchall()
        assert valid == [(i + 1, n) for i, (_, n, r) in enumerate(CASES) if r is None]
        rejected = con.execute(
            f"SELECT source_line, reason, raw FROM {wh.scan('quarantine_' + kind)} ORDER BY 1"
        ).fetchall()
        # ingestion checks required fields first: an address of invisible characters only is missing
        missing = {"email: only white space or invisible characters": "missing required field email"}
        assert [(line, reason) for line, reason, _ in rejected] == [
            (i + 1, missing.get(r, r)) for i, (_, _, r) in enumerate(CASES) if r is not None
        ]
        assert [json.loads(raw)["email"] for _, _, raw in rejected] == [c for c, _, r in CASES if r is not None]
    identities = con.execute(f"SELECT count(DISTINCT email) FROM {wh.scan('raw_profiles')}").fetchall()[0][0]
    assert identities == len({n for _, n, r in CASES if r is None})
    assert identities < sum(r is None for _, _, r in CASES)  # anna@example.com 5 ways is one identity
