"""Small warehouse builders shared by the export tests (plus a self-test of the builders).

They write real partitions with ``Warehouse.write_partition``, exactly as the pipeline would.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from segment_pipeline.core.warehouse import Warehouse, connect

DAY = dt.date(2026, 11, 3)


def identity(email: str) -> str:
    return hashlib.md5(email.encode()).hexdigest()[:16]


def write_rows(wh: Warehouse, table: str, day, rows: list[dict]) -> int:
    con = connect()
    con.execute(f"CREATE TEMP TABLE t AS SELECT * EXCLUDE (date) FROM {wh.empty_relation(table)}")
    cols = list(wh.schema(table))
    if rows:
        unknown = set().union(*rows) - set(cols)
        assert not unknown, unknown
        con.executemany(
            f"INSERT INTO t ({', '.join(_q(c) for c in cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [[r.get(c) for c in cols] for r in rows],
        )
    return wh.write_partition(con, table, day, "SELECT * FROM t")


def profile(email: str, **extra) -> dict:
    return {"identity_id": identity(email), "email": email, **extra}


def write_day(
    wh: Warehouse,
    day,
    profiles: list[dict],
    segments: dict[str, str],
    members: dict[str, list[str]],
) -> None:
    """profiles; segments {segment_id: name}; members {segment_id: [emails]}."""
    write_rows(wh, "profiles", day, profiles)
    write_rows(
        wh,
        "segment_stats",
        day,
        [
            {"segment_id": sid, "segment_name": name, "segment_type": "rule", "status": "refreshed",
             "member_count": len(members.get(sid, []))}
            for sid, name in segments.items()
        ],
    )
    write_rows(
        wh,
        "memberships",
        day,
        [{"segment_id": sid, "identity_id": identity(e), "email": e} for sid, emails in members.items() for e in emails],
    )


def write_synthetic_segment(wh: Warehouse, day, segment_id: str, n_members: int, n_profiles: int) -> None:
    """``n_profiles`` generated profiles, the first ``n_members`` of them in ``segment_id``."""
    con = connect()
    values = {
        "identity_id": "substr(md5('u' || i || '@example.com'), 1, 16)", "email": "'u' || i || '@example.com'",
        "first_name": "'First' || i", "last_name": "'Last' || i", "gender": "CASE WHEN i % 2 = 0 THEN 'F' ELSE 'M' END",
        "dob": "DATE '1990-01-01' + (i % 9000)::INT", "country": "'FI'", "city": "'Helsinki'", "language": "'fi'",
        "time_zone": "'Europe/Helsinki'", "loyalty_tier": "'gold'", "created_at": "TIMESTAMP '2026-01-01 00:00:00'",
        "total_revenue": "i * 1.5", "random_bucket": "i % 10000",
    }
    if wh.model.links:
        values[wh.model.links[0]] = "'c' || i"
    # every other column of the model's profiles: its default (counts 0, the rest NULL)
    columns = ", ".join(f"{values.get(c, '0' if t == 'BIGINT' else 'NULL')} AS {_q(c)}" for c, t in wh.schema("profiles").items())
    profiles = f"SELECT {columns} FROM range({n_profiles}) t(i)"
    wh.write_partition(con, "profiles", day, profiles)
    wh.write_partition(
        con, "memberships", day,
        f"SELECT {_lit(segment_id)} AS segment_id, substr(md5('u' || i || '@example.com'), 1, 16) AS identity_id, "
        f"'u' || i || '@example.com' AS email FROM range({n_members}) t(i)",
    )
    wh.write_partition(
        con, "segment_stats", day,
        f"SELECT {_lit(segment_id)} AS segment_id, 'Big segment' AS segment_name, 'rule' AS segment_type, "
        f"'refreshed' AS status, NULL AS frozen_on, {n_members} AS member_count, 0 AS added, 0 AS removed",
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def test_builders_write_real_partitions(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_day(wh, DAY, [profile("a@x.io"), profile("b@x.io")], {"s1": "One"}, {"s1": ["a@x.io"]})
    con = connect()
    assert con.execute(f"SELECT count(*) FROM {wh.scan('profiles', days=[DAY])}").fetchone()[0] == 2
    assert con.execute(f"SELECT identity_id FROM {wh.scan('memberships', days=[DAY])}").fetchall() == [
        (identity("a@x.io"),)
    ]
