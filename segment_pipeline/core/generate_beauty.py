"""Deterministic sample data for the second example schema (``examples/beauty_shop``): a Shopify
customer CSV export and a Segment-spec event stream, generated inside DuckDB.

Layout written under ``out``::

    shopify_customers/date=YYYY-MM-DD/customers_export.csv
    segment_stream/date=YYYY-MM-DD/segment-YYYY-MM-DD.ndjson

``shopify_customers``: the customers a shop's admin exports each day (Customers > Export, "customers
updated since yesterday"): the header is Shopify's own (``Customer ID``, ``First Name``, ``Last
Name``, ``Email``, ``Accepts Email Marketing``, ``Default Address Company`` ... ``Tags``: Shopify
help center, "Exporting customers"; the exact order checked against real export headers quoted in
public code of Shopify-import tools) plus two metafield columns named the way those exports name
metafields, ``<Name> (customer.metafields.<namespace>.<key>)``
(``Skin Type (customer.metafields.custom.skin_type)``,
``Loyalty Points (customer.metafields.loyalty.points)``). Each row is the customer's full current
record (a snapshot, no timestamp): ``yes``/``no`` consent words, tags joined by ``", "``
(``"VIP, wholesale"``), money as ``12.50``.

``segment_stream``: one NDJSON message per line in the Segment spec (Twilio Segment docs, "Spec:
Common fields", "Identify", "Track", "E-commerce Events v2"): ``identify`` calls with ``userId`` and
``traits`` (``email``, ``firstName``, ``lastName``, ``createdAt``) and ``track`` calls with
``event`` and ``properties``: ``Product Viewed`` (``product_id``, ``sku``, ``name``, ``brand``,
``category``, ``price``, ``currency``), ``Order Completed`` (``order_id``, ``revenue``, ``total``,
``tax``, ``currency``, ``products[]``), ``Subscription Started`` / ``Subscription Cancelled``
(``plan``, ``subscription_id``), ``Email Opened`` (Segment's Email spec: ``email_id``,
``email_subject``, ``campaign_id``, ``campaign_name``; sent server-side with ``context.traits.email``)
and ``Product Added to Wishlist`` (declared by no model: an undeclared event name). Every message
has ``messageId``, ``anonymousId``, ``timestamp``, ``originalTimestamp``, ``sentAt``, ``receivedAt``
(ISO 8601, milliseconds, UTC). Track calls carry ``userId`` only (no email), as Segment sends them.

Realistic dirt, a fixed handful per file (``dirt=True``), so a small sample exercises every case:

* Shopify: a customer without an email (phone-only accounts exist) whose ``Customer ID`` no record
  ever links (unresolved identity); an email without a top-level domain; a second copy of a
  customer's row whose points cell reads ``1,250`` (a spreadsheet's thousands separator).
* Segment: a track call delivered twice with the same ``messageId`` (a retried batch); events of a
  ``userId`` that no identify call ever names (they never resolve); and, for about one customer in
  ten, the signup day's identify call arrives hours after the first track calls of that user (those
  track calls carry only the ``userId``, linked by the later identify of the same day).

Everything is a pure function of ``(seed, salt, keys)`` through :class:`generate._Sql`'s hash
chain, so the same arguments give the same bytes; rows in a file are sorted by time, ties by keys.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from segment_pipeline.core.generate import _csv_quote, _expand, _lit, _Sql, _write

SHOPIFY_SOURCE = "shopify_customers"
SEGMENT_SOURCE = "segment_stream"

#: The Shopify customer export's own header, then the shop's two customer metafields.
SHOPIFY_HEADER = [
    "Customer ID", "First Name", "Last Name", "Email", "Accepts Email Marketing", "Default Address Company",
    "Default Address Address1", "Default Address Address2", "Default Address City",
    "Default Address Province Code", "Default Address Country Code", "Default Address Zip",
    "Default Address Phone", "Phone", "Accepts SMS Marketing", "Total Spent", "Total Orders", "Note",
    "Tax Exempt", "Tags", "Skin Type (customer.metafields.custom.skin_type)",
    "Loyalty Points (customer.metafields.loyalty.points)",
]

# country, weight, name group, phone prefix, cities as (city, province code, zip prefix)
COUNTRIES: list[tuple[str, int, str, str, list[tuple[str, str, str]]]] = [
    ("US", 40, "en", "+1", [("New York", "NY", "100"), ("Los Angeles", "CA", "900"), ("Austin", "TX", "787"),
                            ("Seattle", "WA", "981")]),
    ("GB", 15, "en", "+44", [("London", "", "SW1"), ("Manchester", "", "M1"), ("Leeds", "", "LS1")]),
    ("CA", 12, "en", "+1", [("Toronto", "ON", "M5V"), ("Vancouver", "BC", "V6B"), ("Montreal", "QC", "H2X")]),
    ("AU", 8, "en", "+61", [("Sydney", "NSW", "200"), ("Melbourne", "VIC", "300")]),
    ("DE", 10, "de", "+49", [("Berlin", "", "101"), ("Hamburg", "", "203"), ("Munich", "", "803")]),
    ("FR", 8, "fr", "+33", [("Paris", "", "750"), ("Lyon", "", "690")]),
    ("NL", 7, "nl", "+31", [("Amsterdam", "", "101"), ("Utrecht", "", "351")]),
]
MAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "hotmail.com", "proton.me"]
SKIN_TYPES = [("oily", 25), ("dry", 22), ("combination", 28), ("normal", 15), ("sensitive", 10), (None, 15)]
#: Tags a customer starts with (Shopify joins tags with ", "); "VIP" is added at 1,000 points.
TAG_SETS = [("", 55), ("newsletter", 15), ("wholesale", 6), ("VIP, wholesale", 4), ("VIP", 5),
            ("newsletter, sample-box", 10), ("influencer", 5)]
BRANDS = [("Glow Lab", 22), ("Dermalux", 16), ("Petal & Pine", 14), ("Aqua Veil", 12), ("Nordic Bloom", 11),
          ("Sunday Ritual", 10), ("Kindred Skin", 8), ("L'Atelier Rose", 7)]
CATEGORIES = [("Cleanser", 18), ("Serum", 42), ("Moisturizer", 32), ("Sunscreen", 24), ("Face Mask", 28),
              ("Toner", 16), ("Lip Balm", 9), ("Eye Cream", 38)]  # name, base price (USD)
PRODUCT_WORDS = ["Hydra", "Clear", "Velvet", "Dew", "Radiance", "Barrier", "Calm", "Bright", "Pure", "Silk",
                 "Renew", "Bloom"]
PLANS = [("monthly_box", 7), ("quarterly_box", 3)]
CAMPAIGNS = ["Weekly Glow Notes", "New In: Serums", "Your Points Balance", "Winter Skin SOS", "Members Week"]
ORDER_TYPES = [(0, 0, 50), (1, 1, 30), (2, 4, 20)]  # orders min, max, weight
SUBSCRIBER_RATE = 0.18
CANCEL_RATE = 0.25
HAS_USER_RATE = 0.85  # customers with an app login (a Segment userId)
LATE_IDENTIFY_RATE = 0.1
UPDATE_RATE = 0.08  # per day, share of earlier customers exported again (points, tags, consent changed)
UNSUBSCRIBE_RATE = 0.05


class _B:
    """Salts (never renumber: it would change every file)."""

    CREATED, COUNTRY, CITY, GSIDE, FIRST, LAST, EPAT, DOMAIN, HASUSER, AEM, ASMS, SKIN, TAGS = range(1, 14)
    POINTS, PRATE, OTYPE, KORD, SUB, SUBDAY, CANCEL, CANCELDAY, PLAN, FAV, BUDGET, ENGAGED, LATE = range(14, 27)
    UNSUB, UNSUBDAY, PHONE, HASPHONE, UPD, ODAY, OTIME, ITEMS, IBRAND, IPROD, IQTY, VIEWS, VTIME = range(27, 40)
    VBRAND, VPROD, OPEN, OTIME2, WISH, WTIME, STIME, DUP, GHOST, MSG, RECV, ANON, COMPANY, NOTE = range(40, 54)


def _iso_ms(sec_expr: str, ms_expr: str, start: dt.date) -> str:
    return (f"strftime(TIMESTAMP '{start.isoformat()}' + to_seconds({sec_expr}), '%Y-%m-%dT%H:%M:%S') || '.' "
            f"|| lpad(({ms_expr})::VARCHAR, 3, '0') || 'Z'")


def _uuid(sql: _Sql, salt: int, *keys: Any) -> str:
    """A UUID-shaped hex string from two hashes."""
    a = f"lpad(lower(to_hex({sql.h(salt, *keys)})), 16, '0')"
    b = f"lpad(lower(to_hex({sql.h(salt, *keys, 7)})), 16, '0')"
    return (f"(substr({a}, 1, 8) || '-' || substr({a}, 9, 4) || '-4' || substr({a}, 14, 3) || '-a'"
            f" || substr({b}, 2, 3) || '-' || substr({b}, 5, 12))")


class _Beauty:
    def __init__(self, sql: _Sql, con: duckdb.DuckDBPyConnection, events_per_profile: float):
        self.sql, self.con, self.epp = sql, con, events_per_profile

    # -- customers: one table, every attribute a function of p --------------------------------
    def build_customers(self) -> None:
        s, n, days = self.sql, self.sql.n, self.sql.days
        from segment_pipeline.core.generate import NAMES

        groups = sorted({c[2] for c in COUNTRIES})
        country_idx = _expand([(ci, c[1]) for ci, c in enumerate(COUNTRIES)])
        first = {g: NAMES[g][0] + NAMES[g][1] for g in groups}
        last = {g: NAMES[g][2] for g in groups}
        grp_of = [groups.index(c[2]) for c in COUNTRIES]
        otype = _expand([(t, w) for t, (_, _, w) in enumerate(ORDER_TYPES)])
        skin = _expand(SKIN_TYPES)
        tags = _expand(TAG_SETS)
        brands = _expand([(b, w) for b, (_, w) in enumerate(BRANDS)])
        plans = _expand(PLANS)
        ascii_f = "regexp_replace(lower(strip_accents(first_name)), '[^a-z]', '', 'g')"
        ascii_l = "regexp_replace(lower(strip_accents(last_name)), '[^a-z]', '', 'g')"
        l1 = f"""
            (p * {days}) // {n} AS s, {s.i(_B.CREATED, 86400, 'p')} AS cs,
            {s.pick(country_idx, _B.COUNTRY, 'p')} AS ci, {s.i(_B.CITY, 12, 'p')} AS cityr,
            {s.i(_B.FIRST, 20, 'p')} AS fni, {s.i(_B.LAST, 12, 'p')} AS lni,
            {s.u(_B.HASUSER, 'p')} < {HAS_USER_RATE} AS has_user,
            {s.u(_B.AEM, 'p')} < 0.62 AS accepts_email, {s.u(_B.ASMS, 'p')} < 0.2 AS accepts_sms,
            {s.pick(skin, _B.SKIN, 'p')} AS skin_type, {s.pick(tags, _B.TAGS, 'p')} AS base_tags,
            {s.i(_B.POINTS, 700, 'p')} AS base_points, {s.i(_B.PRATE, 120, 'p')} AS points_rate,
            {s.pick(otype, _B.OTYPE, 'p')} AS ot,
            {s.u(_B.SUB, 'p')} < {SUBSCRIBER_RATE} AS subscriber,
            {s.i(_B.SUBDAY, days, 'p')} AS sub_off, {s.u(_B.CANCEL, 'p')} < {CANCEL_RATE} AS cancels,
            {s.i(_B.CANCELDAY, days, 'p')} AS cancel_off, {s.pick(plans, _B.PLAN, 'p')} AS plan,
            {s.pick(brands, _B.FAV, 'p')} AS fav, 0.3 + 1.4 * {s.u(_B.BUDGET, 'p')} AS budget,
            {s.u(_B.ENGAGED, 'p')} < 0.35 AS engaged, {s.u(_B.LATE, 'p')} < {LATE_IDENTIFY_RATE} AS late_identify,
            {s.u(_B.UNSUB, 'p')} < {UNSUBSCRIBE_RATE} AS unsubscribes, {s.i(_B.UNSUBDAY, days, 'p')} AS unsub_off,
            {s.u(_B.HASPHONE, 'p')} < 0.55 AS has_phone, {s.u(_B.COMPANY, 'p')} < 0.04 AS has_company,
            {s.u(_B.NOTE, 'p')} < 0.03 AS has_note"""
        l2 = f"""
            {_lit([[first[g] for g in groups][x] for x in grp_of])}[ci + 1][fni + 1] AS first_name,
            {_lit([[last[g] for g in groups][x] for x in grp_of])}[ci + 1][lni + 1] AS last_name,
            {_lit([c[0] for c in COUNTRIES])}[ci + 1] AS country,
            cityr % {_lit([len(c[4]) for c in COUNTRIES])}[ci + 1] AS gi,
            {_lit([lo for lo, _, _ in ORDER_TYPES])}[ot + 1]
              + {s.i(_B.KORD, 1000, 'p')} % {_lit([hi - lo + 1 for lo, hi, _ in ORDER_TYPES])}[ot + 1] AS k,
            (7214000000000 + p * 104729)::VARCHAR AS customer_id,
            'usr_' || substr(lpad(lower(to_hex({s.h(_B.HASUSER, 'p', 1)})), 16, '0'), 1, 12) AS user_id,
            s + sub_off AS sub_day, s + sub_off + 1 + cancel_off AS cancel_day, s + 1 + unsub_off AS unsub_day"""
        l3 = f"""
            CASE {s.i(_B.EPAT, 3, 'p')} WHEN 0 THEN {ascii_f} || '.' || {ascii_l} WHEN 1 THEN {ascii_f} || {ascii_l}
                 ELSE left({ascii_f}, 1) || '_' || {ascii_l} END || (p + 1)::VARCHAR || '@'
              || {s.pick(MAIL_DOMAINS, _B.DOMAIN, 'p')} AS email,
            {_lit([[x[0] for x in c[4]] for c in COUNTRIES])}[ci + 1][gi + 1] AS city,
            {_lit([[x[1] for x in c[4]] for c in COUNTRIES])}[ci + 1][gi + 1] AS province,
            {_lit([[x[2] for x in c[4]] for c in COUNTRIES])}[ci + 1][gi + 1]
              || lpad(({s.i(_B.CITY, 100, 'p', 2)})::VARCHAR, 2, '0') AS zip,
            CASE WHEN has_phone THEN {_lit([c[3] for c in COUNTRIES])}[ci + 1]
                 || lpad(({s.i(_B.PHONE, 1000000000, 'p')})::VARCHAR, 9, '0') END AS phone"""
        sql = f"SELECT *, {l1} FROM range({n}) t(p)"
        for layer in (l2, l3):
            sql = f"SELECT *, {layer} FROM ({sql})"
        self.con.execute(f"CREATE TABLE cust AS {sql}")

    def build_orders(self) -> None:
        s, days = self.sql, self.sql.days
        brands = [b for b, _ in BRANDS]
        cats = [c for c, _ in CATEGORIES]
        base = [pr for _, pr in CATEGORIES]
        # one row per order item; items of an order share (p, j)
        items = f"""
            SELECT p, j, x,
                   s + CASE WHEN j = 0 AND {s.u(_B.ODAY, 'p', 'j', 9)} < 0.5 THEN 0
                            ELSE {s.i(_B.ODAY, days, 'p', 'j')} END AS od,
                   CASE WHEN {s.u(_B.IBRAND, 'p', 'j', 'x')} < 0.6 THEN fav
                        ELSE {s.i(_B.IBRAND, len(brands), 'p', 'j', 'x', 1)} END AS b,
                   {s.i(_B.IPROD, len(cats) * len(PRODUCT_WORDS), 'p', 'j', 'x')} AS m,
                   {s.pick(_expand([(1, 80), (2, 17), (3, 3)]), _B.IQTY, 'p', 'j', 'x')} AS qty,
                   customer_id, user_id, cs
            FROM (SELECT *, unnest(range(1 + {s.i(_B.ITEMS, 3, 'p', 'j')})) AS x
                  FROM (SELECT *, unnest(range(k)) AS j FROM cust WHERE k > 0))"""
        priced = f"""
            SELECT *, {self.product_cols('b', 'm')},
                   {_lit(base)}[m % {len(cats)} + 1] AS base_price
            FROM ({items})"""
        price = f"(base_price + (({s.h(_B.IPROD, 'b * 1000 + m')}) % 3) * 4 - 0.01)::DECIMAL(10, 2)"
        self.con.execute(f"""
            CREATE TABLE items AS SELECT p, j, x, od, b, m, qty, product_id, sku, product_name, brand, category,
                                         {price} AS price
            FROM ({priced}) WHERE od < {days}""")
        self.con.execute(f"""
            CREATE TABLE orders AS
            SELECT p, j, od,
                   CASE WHEN od = any_value(c.s) THEN any_value(c.cs) + 60 ELSE 0 END
                     + {s.i(_B.OTIME, 86000, 'p', 'j')} AS osec,
                   sum(price * qty)::DECIMAL(12, 2) AS revenue,
                   list(struct_pack(product_id := product_id, sku := sku, name := product_name, brand := brand,
                                    category := category, price := price, quantity := qty) ORDER BY x) AS products
            FROM items JOIN cust c USING (p) GROUP BY p, j, od""")
        self.con.execute("UPDATE orders SET osec = least(osec, 86399)")

    def product_exprs(self, b: str, m: str) -> dict[str, str]:
        """SQL of a product's fields from brand index ``b`` and product slot ``m``."""
        brands = [x for x, _ in BRANDS]
        cats = [c for c, _ in CATEGORIES]
        return {
            "product_id": f"'BEA-' || lpad(({b} * 1000 + {m})::VARCHAR, 5, '0')",
            "sku": f"upper(left(regexp_replace({_lit(brands)}[{b} + 1], '[^A-Za-z]', '', 'g'), 3)) || '-' "
                   f"|| lpad(({m})::VARCHAR, 3, '0')",
            "product_name": f"{_lit(brands)}[{b} + 1] || ' ' || {_lit(PRODUCT_WORDS)}[{m} // {len(cats)} + 1] || ' ' "
                            f"|| {_lit(cats)}[{m} % {len(cats)} + 1]",
            "brand": f"{_lit(brands)}[{b} + 1]",
            "category": f"{_lit(cats)}[{m} % {len(cats)} + 1]",
        }

    def product_cols(self, b: str, m: str) -> str:
        return ", ".join(f"{expr} AS {name}" for name, expr in self.product_exprs(b, m).items())

    # -- Shopify export of one day ---------------------------------------------------------
    def shopify_day(self, d: int, dirt: bool) -> str:
        s = self.sql
        # customers exported on day d: signups, plus earlier customers whose record changed
        rows = f"""
            SELECT c.*, 0 AS rk,
                   base_points + points_rate * ({d} - s) AS points,
                   coalesce(o.n, 0) AS total_orders, coalesce(o.spent, 0) AS total_spent
            FROM cust c
            LEFT JOIN (SELECT p AS op, count(*) AS n, sum(revenue) AS spent FROM orders WHERE od <= {d} GROUP BY p) o
                   ON o.op = c.p
            WHERE s = {d} OR (s < {d} AND {s.u(_B.UPD, 'p', d)} < {UPDATE_RATE})"""
        cells = f"""
            SELECT p, rk, customer_id, first_name, last_name, email,
                   CASE WHEN accepts_email AND NOT (unsubscribes AND unsub_day <= {d}) THEN 'yes' ELSE 'no' END AS aem,
                   CASE WHEN has_company THEN last_name || ' Beauty Supply' END AS company,
                   ({s.i(_B.CITY, 180, 'p', 3)} + 1)::VARCHAR || ' ' || {_lit(['Main St', 'High Street', 'Oak Avenue', 'Rue de Lyon', 'Hauptstraße', 'Keizersgracht'])}[{s.i(_B.CITY, 6, 'p', 4)} + 1] AS address1,
                   CASE WHEN {s.u(_B.CITY, 'p', 5)} < 0.2 THEN 'Apt ' || ({s.i(_B.CITY, 40, 'p', 6)} + 1)::VARCHAR END AS address2,
                   city, CASE WHEN province = '' THEN NULL ELSE province END AS province, country, zip,
                   phone AS address_phone, phone,
                   CASE WHEN accepts_sms AND has_phone THEN 'yes' ELSE 'no' END AS asms,
                   total_spent::DECIMAL(12, 2)::VARCHAR AS spent, total_orders::VARCHAR AS orders,
                   CASE WHEN has_note THEN 'Prefers fragrance-free samples, ships to office' END AS note,
                   'no' AS tax_exempt,
                   CASE WHEN points >= 1000 AND NOT contains(base_tags, 'VIP')
                        THEN CASE WHEN base_tags = '' THEN 'VIP' ELSE base_tags || ', VIP' END
                        ELSE nullif(base_tags, '') END AS tags,
                   skin_type, points::VARCHAR AS points,
                   s * 86400 + cs AS ts
            FROM ({rows})"""
        if dirt:
            # a phone-only customer no record links; an email without a top-level domain; a copy of
            # a customer's row with "1,250" points (rk 1..3, placed at fixed times of the day)
            g = f"(SELECT * FROM cust ORDER BY {s.h(_B.GHOST, 'p', d)} LIMIT 1)"
            cells += f"""
            UNION ALL
            SELECT -1, 1, (7999000000000 + {d})::VARCHAR, 'Walk-in', 'Customer', NULL, 'no', NULL, NULL, NULL,
                   'Austin', 'TX', 'US', '78701', NULL, '+1512555' || lpad('{d % 10000}', 4, '0'), 'yes', '0.00', '0',
                   'Phone-only account', 'no', NULL, NULL, '0', {d * 86400 + 30000}
            UNION ALL
            SELECT p, 2, customer_id, first_name, last_name, split_part(email, '@', 1) || '@gmail', 'yes', NULL,
                   '12 Main St', NULL, city, nullif(province, ''), country, zip, NULL, NULL, 'no', '0.00', '0', NULL,
                   'no', nullif(base_tags, ''), skin_type, '10', {d * 86400 + 40000} FROM {g}
            UNION ALL
            SELECT p, 3, customer_id, first_name, last_name, email, 'yes', NULL, '12 Main St', NULL, city, nullif(province, ''),
                   country, zip, NULL, NULL, 'no', '0.00', '0', NULL, 'no', nullif(base_tags, ''), skin_type, '1,250',
                   {d * 86400 + 50000} FROM {g}"""
        cols = ["customer_id", "first_name", "last_name", "email", "aem", "company", "address1", "address2", "city",
                "province", "country", "zip", "address_phone", "phone", "asms", "spent", "orders", "note",
                "tax_exempt", "tags", "skin_type", "points"]
        line = " || ',' || ".join(_csv_quote(c) for c in cols)
        return f'SELECT {line} AS "{",".join(SHOPIFY_HEADER)}" FROM ({cells}) ORDER BY ts, rk, p'

    # -- Segment stream of one day -----------------------------------------------------------
    def segment_day(self, d: int, dirt: bool) -> str:
        s, start, epp = self.sql, self.sql.start, self.epp
        day0 = d * 86400
        vb = _expand([(b, w) for b, (_, w) in enumerate(BRANDS)])
        # identify calls: at signup (late ones 2-8 hours after, still that day)
        identify = f"""
            SELECT p, 'identify' AS kind, 0 AS j,
                   least(cs + CASE WHEN late_identify THEN 7200 + {s.i(_B.LATE, 21600, 'p', 1)} ELSE 0 END, 86399) AS sec
            FROM cust WHERE has_user AND s = {d}"""
        # product views: a Poisson-like count per (customer, day); more on the signup day
        mu = f"budget * {epp / 2!r} * CASE WHEN s = {d} THEN 1.5 ELSE {1 / max(self.sql.days, 1)!r} * 2 END"
        views = f"""
            SELECT p, 'view' AS kind, j, CASE WHEN s = {d} THEN cs ELSE 0 END AS lo
            FROM (SELECT *, unnest(range(floor({mu})::BIGINT + ({s.u(_B.VIEWS, 'p', d)} < {mu} - floor({mu}))::BIGINT)) AS j
                  FROM cust WHERE has_user AND s <= {d})"""
        views = f"SELECT p, kind, j, lo + {s.i(_B.VTIME, '86400 - lo', 'p', d, 'j')} AS sec FROM ({views})"
        orders = f"SELECT p, 'order' AS kind, j, osec AS sec FROM orders JOIN cust USING (p) WHERE od = {d} AND has_user"
        subs = f"""
            SELECT p, 'sub' AS kind, 0 AS j, least(CASE WHEN sub_day = s THEN cs + 120 ELSE 0 END
                   + {s.i(_B.STIME, 80000, 'p')}, 86399) AS sec FROM cust WHERE has_user AND subscriber AND sub_day = {d}
            UNION ALL
            SELECT p, 'cancel', 0, {s.i(_B.STIME, 86000, 'p', 1)} FROM cust
            WHERE has_user AND subscriber AND cancels AND cancel_day = {d}"""
        opens = f"""
            SELECT p, 'open' AS kind, j, CASE WHEN s = {d} THEN cs ELSE 0 END
                   + {s.i(_B.OTIME2, '86400 - CASE WHEN s = ' + str(d) + ' THEN cs ELSE 0 END', 'p', d, 'j')} AS sec
            FROM (SELECT *, unnest(range(CASE WHEN {s.u(_B.OPEN, 'p', d)} < CASE WHEN engaged THEN 0.75 ELSE 0.08 END
                                              THEN 1 + ({s.u(_B.OPEN, 'p', d, 1)} < 0.3)::INTEGER ELSE 0 END)) AS j
                  FROM cust WHERE has_user AND accepts_email AND s <= {d}
                        AND NOT (unsubscribes AND unsub_day <= {d}))"""
        wish = f"""
            SELECT p, 'wish' AS kind, 0 AS j, CASE WHEN s = {d} THEN cs ELSE 0 END
                   + {s.i(_B.WTIME, '86400 - CASE WHEN s = ' + str(d) + ' THEN cs ELSE 0 END', 'p', d)} AS sec
            FROM cust WHERE has_user AND s <= {d} AND {s.u(_B.WISH, 'p', d)} < 0.04"""
        msgs = " UNION ALL ".join(f"({q})" for q in (identify, views, orders, subs, opens, wish))
        base = f"""
            SELECT m.*, 0 AS dup, c.user_id, c.email, c.first_name, c.last_name, c.s, c.cs, c.fav, c.plan,
                   c.customer_id,
                   CASE WHEN {s.u(_B.VBRAND, 'm.p', d, 'm.j')} < 0.55 THEN c.fav
                        ELSE {s.pick(vb, _B.VBRAND, 'm.p', d, 'm.j', 1)} END AS vb,
                   {s.i(_B.VPROD, len(CATEGORIES) * len(PRODUCT_WORDS), 'm.p', d, 'm.j')} AS vm
            FROM ({msgs}) m JOIN cust c USING (p)"""
        if dirt:
            # a ghost userId no identify ever names (2 views), and one track call delivered twice
            base = f"""
            {base}
            UNION ALL
            SELECT -1 - x, 'view', x, 20000 + 3600 * x, 0, 'usr_ghost' || lpad('{d}', 7, '0'), NULL, NULL, NULL,
                   0, 0, 0, NULL, NULL, x, x * 7
            FROM range(2) t(x)"""
            base = f"""
            SELECT * FROM ({base})
            UNION ALL
            SELECT * REPLACE (1 AS dup, sec + 2 AS sec)
            FROM ({base}) WHERE kind = 'view' AND p >= 0
            QUALIFY row_number() OVER (ORDER BY {s.h(_B.DUP, 'p', 'j', d)}, p, j) = 1"""
        ts = _iso_ms(f"{day0} + sec", f"{s.i(_B.MSG, 1000, 'p + 1000000', 'j', 'kind_no')}", start)
        recv = _iso_ms(f"{day0} + sec + 1 + dup * 30", f"{s.i(_B.RECV, 1000, 'p + 1000000', 'j', 'kind_no')}", start)
        kind_no = "list_position(['identify', 'view', 'order', 'sub', 'cancel', 'open', 'wish'], kind)"
        lib_web = "struct_pack(name := 'analytics.js', version := 'next-1.70.0')"
        lib_node = "struct_pack(name := 'analytics-node', version := '2.1.2')"
        ctx_web = f"struct_pack(library := {lib_web}, locale := 'en-US')"
        msg_id = f"'ajs-next-' || md5(({s.h(_B.MSG, 'p + 1000000', 'j', 'kind_no', d)})::VARCHAR)"
        anon = _uuid(s, _B.ANON, "p + 1000000")
        common = (f"anonymousId := {anon}, messageId := {msg_id}, originalTimestamp := ts, "
                  "receivedAt := recv, sentAt := ts, timestamp := ts")
        pc = self.product_exprs('vb', 'vm')
        cats = [c for c, _ in CATEGORIES]
        vprice = (f"({_lit([pr for _, pr in CATEGORIES])}[vm % {len(cats)} + 1] "
                  f"+ (({s.h(_B.IPROD, 'vb * 1000 + vm')}) % 3) * 4 - 0.01)::DECIMAL(10, 2)")
        view_json = (f"to_json(struct_pack({common}, context := {ctx_web}, "
                     f"event := CASE kind WHEN 'wish' THEN 'Product Added to Wishlist' ELSE 'Product Viewed' END, "
                     f"integrations := json('{{}}'), "
                     f"properties := struct_pack(product_id := {pc['product_id']}, sku := {pc['sku']}, "
                     f"name := {pc['product_name']}, brand := {pc['brand']}, category := {pc['category']}, "
                     f"price := {vprice}, currency := 'USD'), type := 'track', userId := user_id))")
        order_json = (f"to_json(struct_pack({common}, context := {ctx_web}, event := 'Order Completed', "
                      "integrations := json('{}'), "
                      "properties := struct_pack(order_id := 'BS-' || lpad((p * 8 + j + 1001)::VARCHAR, 8, '0'), "
                      "checkout_id := md5('chk' || p::VARCHAR || '-' || j::VARCHAR), "
                      "total := (o.revenue * 1.08 + 4.95)::DECIMAL(12, 2), revenue := o.revenue, "
                      "shipping := 4.95, tax := (o.revenue * 0.08)::DECIMAL(12, 2), currency := 'USD', "
                      "products := o.products), type := 'track', userId := user_id))")
        sub_json = (f"to_json(struct_pack({common}, context := {ctx_web}, "
                    "event := CASE kind WHEN 'sub' THEN 'Subscription Started' ELSE 'Subscription Cancelled' END, "
                    "integrations := json('{}'), "
                    "properties := struct_pack(plan := plan, subscription_id := 'sub_' || customer_id), "
                    "type := 'track', userId := user_id))")
        camp = f"{_lit(CAMPAIGNS)}[({d} + j) % {len(CAMPAIGNS)} + 1]"
        open_json = (f"to_json(struct_pack({common}, context := struct_pack(library := {lib_node}, "
                     "traits := struct_pack(email := email)), event := 'Email Opened', integrations := json('{}'), "
                     f"properties := struct_pack(email_id := 'em_' || lpad(({d} * 10 + j)::VARCHAR, 6, '0'), "
                     f"email_subject := {camp}, campaign_id := 'cmp_' || lpad((({d} + j) % {len(CAMPAIGNS)} + 1)::VARCHAR, 3, '0'), "
                     f"campaign_name := {camp}), type := 'track', userId := user_id))")
        identify_json = (f"to_json(struct_pack({common}, context := {ctx_web}, integrations := json('{{}}'), "
                         "traits := struct_pack(email := email, firstName := first_name, lastName := last_name, "
                         f"createdAt := {_iso_ms(f'{day0} + cs', '0', start)}), "
                         "type := 'identify', userId := user_id))")
        line = (f"CASE kind WHEN 'identify' THEN {identify_json} WHEN 'order' THEN {order_json} "
                f"WHEN 'sub' THEN {sub_json} WHEN 'cancel' THEN {sub_json} WHEN 'open' THEN {open_json} "
                f"ELSE {view_json} END::VARCHAR")
        return f"""
            SELECT {line} AS line
            FROM (SELECT b.*, {kind_no} AS kind_no FROM ({base}) b) b
            CROSS JOIN LATERAL (SELECT {ts} AS ts, {recv} AS recv)
            LEFT JOIN (SELECT p AS op, j AS oj, revenue, products FROM orders) o ON kind = 'order' AND op = b.p AND oj = b.j
            ORDER BY sec, kind_no, b.p, b.j, dup"""


def generate_beauty(
    out_dir: str | Path,
    profiles: int,
    days: int,
    seed: int,
    start: str | dt.date,
    events_per_profile: float = 3.0,
    dirt: bool = True,
    *,
    memory_limit: str = "1500MB",
    threads: int | None = None,
) -> dict[str, Any]:
    """Write ``days`` days of the beauty shop's landing files under ``out_dir``; return a summary
    (``files``, ``profile_rows`` = Shopify CSV rows, ``event_rows`` = Segment messages, ``bytes``)."""
    if profiles < 1 or days < 1:
        raise ValueError("profiles and days must be at least 1")
    start_date = start if isinstance(start, dt.date) else dt.date.fromisoformat(start)
    out = Path(out_dir)
    t0 = time.perf_counter()
    sql = _Sql(seed % (1 << 63), profiles, days, start_date, events_per_profile)
    summary: dict[str, Any] = {"out_dir": str(out), "format": "csv+ndjson", "days": days, "files": 0,
                               "profile_rows": 0, "event_rows": 0, "malformed_profile_rows": 0,
                               "malformed_event_rows": 0, "bytes": 0}
    tmpdir = tempfile.mkdtemp(prefix="segment-generate-")
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": tmpdir})
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute("SET preserve_insertion_order = true")
        gen = _Beauty(sql, con, events_per_profile)
        gen.build_customers()
        gen.build_orders()
        for d in range(days):
            iso = (start_date + dt.timedelta(days=d)).isoformat()
            for source, name, select, fmt in (
                (SHOPIFY_SOURCE, "customers_export.csv", gen.shopify_day(d, dirt), "csv"),
                (SEGMENT_SOURCE, f"segment-{iso}.ndjson", gen.segment_day(d, dirt), "ndjson"),
            ):
                target = out / source / f"date={iso}" / name
                _write(con, select, target, fmt)
                rows = con.execute(f"SELECT count(*) FROM ({select})").fetchone()[0]
                summary["profile_rows" if fmt == "csv" else "event_rows"] += rows
                summary["malformed_profile_rows" if fmt == "csv" else "malformed_event_rows"] += 3 if dirt else 0
                summary["files"] += 1
                summary["bytes"] += target.stat().st_size
    finally:
        con.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
