"""Deterministic sample landing data: daily profile and event files, generated inside DuckDB.

Layout written under ``out``::

    profiles/date=YYYY-MM-DD/profiles-YYYY-MM-DD.<ext>
    events/date=YYYY-MM-DD/events-YYYY-MM-DD.<ext>

with ``<ext>`` one of ``ndjson``, ``csv`` or ``parquet`` and one file per kind per day. That is the
apparel demo's schema (``data/``); ``--example beauty_shop`` writes the second example's schema
instead (a Shopify customer CSV export and a Segment-spec stream, see
:mod:`segment_pipeline.core.generate_beauty`), with the same primitives.

How it works
------------
Nothing is generated row by row in Python. Every value is a pure function of
``(seed, field salt, row keys)``, chained through DuckDB's single-argument ``hash`` (a 64-bit
murmur-style mix, stable for equal inputs; the committed sample and its test pin down the output
of the pinned duckdb version), so any day can be
produced on its own and the data stays consistent across days without keeping state:

* Customer ``p`` (0 <= p < profiles) signs up on day ``p * days // profiles``; all its immutable
  attributes (names, email, country/city, ...) and its behaviour (prospect / one-time buyer /
  two-time buyer / repeat buyer, favourite brands, acquisition source, browse budget) are functions
  of ``p``. Cities, time zones, languages and phone prefixes always agree with the country.
* A day's profile file holds that day's signups (first record of each customer) plus updates of
  customers who signed up earlier: a city move (with the new city's country and time zone), a new
  phone, a new loyalty tier (all partial: other attributes are left out, meaning "unchanged":
  no key in NDJSON, an empty cell in CSV, a null in Parquet; an explicit JSON null would clear), or an
  identity record whose email differs from the stored one only in case / surrounding spaces.
  Mutable attributes only ever appear in the record that sets them, so records never contradict
  each other.
* A day's event file scans the customers signed up by that day. Each customer is active for
  ``days`` days from its signup: a share of its browsing (page_view / product_view / add_to_cart)
  happens on the signup day, the rest at a constant daily rate; buyers place 1, 2 or 3-6 orders on
  days drawn over that horizon (the first often on the signup day; an order may be preceded by an
  add_to_cart of the same product) and prospects never order. What falls after the last day is
  simply not in the data, so daily volumes grow with the customer base instead of piling up on
  the last day. Events on a customer's signup day happen after the signup and carry the
  customer's first-touch source.
* Malformed rows are extra rows right after a valid row they are a broken copy of (bad email,
  missing required field, unparsable timestamp, wrong type, unknown event type, not-JSON line /
  wrong number of CSV columns). Their share is ``malformed_rate``, but when the rate is positive
  each file gets about three of them at least, so small samples still exercise every kind.

Rows in a file are sorted by their timestamp (ties broken by unique keys), so the bytes written
do not depend on thread scheduling. NDJSON and CSV lines are rendered in SQL and written through
DuckDB's CSV writer with quoting disabled (the only way to also emit lines that are deliberately
not JSON); Parquet files have all-VARCHAR columns.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from segment_pipeline.core.atomic import atomic_path

FORMATS = ("ndjson", "csv", "parquet")

PROFILE_FIELDS: list[tuple[str, str]] = [
    ("customer_id", "str"),
    ("email", "str"),
    ("first_name", "str"),
    ("last_name", "str"),
    ("gender", "str"),
    ("dob", "str"),
    ("phone", "str"),
    ("country", "str"),
    ("city", "str"),
    ("language", "str"),
    ("time_zone", "str"),
    ("loyalty_tier", "str"),
    ("created_at", "str"),
    ("updated_at", "str"),
]

EVENT_FIELDS: list[tuple[str, str]] = [
    ("event_id", "str"),
    ("email", "str"),
    ("event_type", "str"),
    ("occurred_at", "str"),
    ("product_id", "str"),
    ("product_name", "str"),
    ("brand", "str"),
    ("category", "str"),
    ("price", "num"),
    ("quantity", "int"),
    ("revenue", "num"),
    ("order_id", "str"),
    ("utm_source", "str"),
    ("utm_medium", "str"),
    ("utm_campaign", "str"),
]

EVENT_TYPES = ("page_view", "product_view", "add_to_cart", "order")

#: Kinds of malformed rows, in the order their index is drawn. "structural" is a line that is not
#: JSON (NDJSON) or has the wrong number of columns (CSV); Parquet cannot carry such a row, so
#: there it falls back to the first kind (bad email).
PROFILE_MALFORMED_KINDS = ("bad_email", "missing_updated_at", "bad_timestamp", "missing_email", "structural")
EVENT_MALFORMED_KINDS = (
    "bad_email",
    "missing_event_id",
    "bad_timestamp",
    "wrong_type",
    "unknown_event_type",
    "structural",
)
BAD_EMAILS = ("not-an-email", "a@@b", "anna.schmidt@", "@example.com", "john doe@example.com")
BAD_TIMESTAMPS = ("yesterday", "2026-13-45T00:00:00Z", "03/11/2026 25:61", "not a timestamp")
UNKNOWN_EVENT_TYPES = ("click", "purchase_complete", "wishlist_add")

#: When malformed_rate > 0 each file gets at least about this many malformed rows.
MIN_MALFORMED_PER_FILE = 3

# --------------------------------------------------------------------------------------------
# Reference data. Weights are integers; a weighted pick indexes a list with each value repeated
# ``weight`` times.

# code, weight, language, name group, local mail domain, phone prefix, phone digits after prefix,
# cities as (city, IANA zone, weight out of 10, area code or "")
COUNTRIES: list[tuple[str, int, str, str, str, str, int, list[tuple[str, str, int, str]]]] = [
    ("DE", 26, "de", "de", "gmx.de", "+4915", 9, [
        ("Berlin", "Europe/Berlin", 4, ""), ("Munich", "Europe/Berlin", 2, ""),
        ("Hamburg", "Europe/Berlin", 2, ""), ("Cologne", "Europe/Berlin", 1, ""),
        ("Frankfurt", "Europe/Berlin", 1, "")]),
    ("US", 22, "en", "en", "aol.com", "+1", 7, [
        ("New York", "America/New_York", 4, "212"), ("Los Angeles", "America/Los_Angeles", 2, "310"),
        ("Chicago", "America/Chicago", 2, "312"), ("San Francisco", "America/Los_Angeles", 1, "415"),
        ("Austin", "America/Chicago", 1, "512")]),
    ("GB", 11, "en", "en", "btinternet.com", "+447", 9, [
        ("London", "Europe/London", 6, ""), ("Manchester", "Europe/London", 2, ""),
        ("Edinburgh", "Europe/London", 2, "")]),
    ("FR", 9, "fr", "fr", "orange.fr", "+336", 8, [
        ("Paris", "Europe/Paris", 6, ""), ("Lyon", "Europe/Paris", 2, ""),
        ("Marseille", "Europe/Paris", 2, "")]),
    ("NL", 6, "nl", "nl", "ziggo.nl", "+316", 8, [
        ("Amsterdam", "Europe/Amsterdam", 6, ""), ("Rotterdam", "Europe/Amsterdam", 2, ""),
        ("Utrecht", "Europe/Amsterdam", 2, "")]),
    ("SE", 6, "sv", "sv", "telia.se", "+467", 8, [
        ("Stockholm", "Europe/Stockholm", 6, ""), ("Gothenburg", "Europe/Stockholm", 2, ""),
        ("Malmö", "Europe/Stockholm", 2, "")]),
    ("FI", 5, "fi", "fi", "elisa.fi", "+35840", 7, [
        ("Helsinki", "Europe/Helsinki", 6, ""), ("Espoo", "Europe/Helsinki", 2, ""),
        ("Tampere", "Europe/Helsinki", 2, "")]),
    ("ES", 6, "es", "es", "telefonica.es", "+346", 8, [
        ("Madrid", "Europe/Madrid", 5, ""), ("Barcelona", "Europe/Madrid", 4, ""),
        ("Valencia", "Europe/Madrid", 1, "")]),
    ("IT", 6, "it", "it", "libero.it", "+393", 9, [
        ("Milan", "Europe/Rome", 5, ""), ("Rome", "Europe/Rome", 4, ""), ("Turin", "Europe/Rome", 1, "")]),
    ("AT", 3, "de", "de", "aon.at", "+43664", 7, [
        ("Vienna", "Europe/Vienna", 7, ""), ("Graz", "Europe/Vienna", 3, "")]),
]

NAME_GROUPS = ["de", "en", "fr", "nl", "sv", "fi", "es", "it"]
# per group: 10 female, 10 male first names, 12 last names
NAMES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "de": (["Anna", "Lena", "Julia", "Sophie", "Marie", "Laura", "Katharina", "Hannah", "Jana", "Jülide"],
           ["Lukas", "Jonas", "Felix", "Paul", "Maximilian", "Jürgen", "Tobias", "Florian", "Stefan", "Moritz"],
           ["Schmidt", "Müller", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
            "Hoffmann", "Koch", "Richter"]),
    "en": (["Emma", "Olivia", "Ava", "Sophia", "Isabella", "Mia", "Charlotte", "Amelia", "Emily", "Grace"],
           ["James", "John", "Michael", "David", "William", "Oliver", "Noah", "Liam", "Ethan", "Daniel"],
           ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "O'Brien",
            "Taylor", "Wilson", "Anderson"]),
    "fr": (["Camille", "Léa", "Chloé", "Manon", "Inès", "Jeanne", "Louise", "Zoé", "Claire", "Élodie"],
           ["Lucas", "Hugo", "Louis", "Gabriel", "Arthur", "Théo", "Jules", "Antoine", "Nicolas", "Mathis"],
           ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
            "Moreau", "Simon", "Laurent"]),
    "nl": (["Sanne", "Lotte", "Fleur", "Anouk", "Eva", "Lisa", "Femke", "Iris", "Noor", "Sara"],
           ["Daan", "Sem", "Bram", "Thijs", "Ruben", "Lars", "Jesse", "Milan", "Niels", "Joost"],
           ["de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser",
            "Smit", "Meijer", "de Boer", "Mulder"]),
    "sv": (["Elsa", "Alice", "Maja", "Astrid", "Ebba", "Freja", "Saga", "Linnea", "Åsa", "Ingrid"],
           ["Erik", "Lars", "Oskar", "Axel", "Björn", "Gustav", "Nils", "Anders", "Johan", "Karl"],
           ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson",
            "Persson", "Svensson", "Gustafsson", "Lindqvist", "Öberg"]),
    "fi": (["Aino", "Eevi", "Helmi", "Sofia", "Venla", "Aada", "Emilia", "Iida", "Linnea", "Kaisa"],
           ["Eino", "Väinö", "Leo", "Onni", "Elias", "Mikko", "Juha", "Antti", "Matti", "Ville"],
           ["Korhonen", "Virtanen", "Mäkinen", "Nieminen", "Mäkelä", "Hämäläinen", "Laine",
            "Heikkinen", "Koskinen", "Järvinen", "Lehtonen", "Lehtinen"]),
    "es": (["Lucía", "Sofía", "Martina", "María", "Paula", "Julia", "Carmen", "Elena", "Alba", "Noa"],
           ["Hugo", "Martín", "Pablo", "Alejandro", "Daniel", "Javier", "Diego", "Sergio", "Álvaro", "Mateo"],
           ["García", "Rodríguez", "González", "Fernández", "López", "Martínez", "Sánchez", "Pérez",
            "Gómez", "Martín", "Jiménez", "Ruiz"]),
    "it": (["Giulia", "Sofia", "Aurora", "Alice", "Ginevra", "Emma", "Giorgia", "Chiara", "Francesca", "Sara"],
           ["Leonardo", "Francesco", "Alessandro", "Lorenzo", "Mattia", "Matteo", "Andrea", "Gabriele",
            "Marco", "Luca"],
           ["Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
            "Greco", "Bruno", "Gallo"]),
}

MAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "hotmail.com", "proton.me"]

BRANDS: list[tuple[str, int, list[tuple[str, int]]]] = [
    ("Nike", 20, [("sneakers", 4), ("hoodies", 2), ("t-shirts", 2), ("jackets", 1), ("accessories", 1)]),
    ("Adidas", 16, [("sneakers", 4), ("hoodies", 2), ("t-shirts", 2), ("jackets", 1), ("accessories", 1)]),
    ("Timberland", 7, [("boots", 6), ("jackets", 2), ("hoodies", 1), ("accessories", 1)]),
    ("Puma", 9, [("sneakers", 5), ("t-shirts", 2), ("hoodies", 2), ("accessories", 1)]),
    ("New Balance", 10, [("sneakers", 7), ("t-shirts", 1), ("hoodies", 1), ("accessories", 1)]),
    ("Levi's", 9, [("jeans", 6), ("jackets", 2), ("t-shirts", 2)]),
    ("The North Face", 9, [("jackets", 6), ("backpacks", 2), ("hoodies", 1), ("accessories", 1)]),
    ("Patagonia", 5, [("jackets", 5), ("backpacks", 2), ("hoodies", 2), ("t-shirts", 1)]),
    ("Converse", 7, [("sneakers", 8), ("t-shirts", 1), ("accessories", 1)]),
    ("Vans", 8, [("sneakers", 7), ("t-shirts", 1), ("hoodies", 1), ("accessories", 1)]),
]
PRODUCTS_PER_BRAND = 40  # product slot m: category = brand's category slot m % 10, model word m
CATEGORY_INFO: dict[str, tuple[str, int]] = {  # label for product names, base price
    "sneakers": ("Sneaker", 99), "boots": ("Boot", 159), "jackets": ("Jacket", 149),
    "t-shirts": ("T-Shirt", 29), "jeans": ("Jeans", 89), "hoodies": ("Hoodie", 69),
    "accessories": ("Cap", 29), "backpacks": ("Backpack", 89),
}
MODEL_WORDS = [
    "Air", "Classic", "Trail", "Urban", "Summit", "Venture", "Pro", "Heritage", "Essential", "Retro",
    "Vintage", "Storm", "Drift", "Peak", "Metro", "Canyon", "Coast", "Ridge", "Nova", "Orbit",
    "Pulse", "Flux", "Terra", "Alpine", "Harbor", "Vista", "Nomad", "Echo", "Glide", "Rally",
    "Tempo", "Arc", "Frontier", "Boulder", "Breeze", "Cruise", "Dune", "Ember", "Forge", "Grove",
]

# utm sources: (name, first-touch weight, later-session weight, mediums, campaigns). Events on the
# signup day carry the first-touch (acquisition) source; later sessions come back through it with
# probability RETURN_VIA_FIRST_TOUCH, else through a source drawn with the later-session weights.
RETURN_VIA_FIRST_TOUCH = 0.35
SOURCES: list[tuple[str | None, int, int, list[str | None], list[str | None]]] = [
    ("instagram", 32, 18, ["social", "paid_social"], ["singles_day_2026", "winter_jackets", "influencer_collab"]),
    ("google", 24, 18, ["cpc", "organic"], ["brand_search", "singles_day_2026", "winter_jackets"]),
    ("facebook", 10, 8, ["paid_social", "paid_social"], ["retargeting", "winter_jackets", "retargeting"]),
    ("newsletter", 4, 22, ["email", "email"], ["weekly_digest", "welcome_series", "singles_day_2026"]),
    ("tiktok", 12, 10, ["paid_social", "paid_social"], ["sneaker_drop", "influencer_collab", "sneaker_drop"]),
    ("direct", 18, 24, [None, None], [None, None, None]),
]

# customer behaviour types: (weight, orders min, orders max, browse weight)
CUSTOMER_TYPES = [(60, 0, 0, 1.0), (21, 1, 1, 1.0), (7, 2, 2, 1.3), (12, 3, 6, 2.0)]
SIGNUP_DAY_BROWSE_SHARE = 0.3  # share of a customer's browsing that happens on its signup day
FIRST_ORDER_AT_SIGNUP = 0.4  # probability that a buyer's first order is on its signup day
CART_BEFORE_ORDER = 0.6  # probability that an order is preceded by an add_to_cart event
MAX_ORDER_EVENT_SHARE = 0.45  # at low events_per_profile, orders + their carts stay below this share
BROWSE_TYPES = [("page_view", 50), ("product_view", 38), ("add_to_cart", 12)]
UPDATE_RATE = 0.05  # per day, share of existing customers with an update record
UPDATE_KINDS = [("move", 25), ("phone", 20), ("tier", 25), ("variant", 30)]
EVENT_EMAIL_VARIANT_RATE = 0.05


class _S:
    """Salts: one integer per random decision. Never renumber (it would change every file)."""

    CREATED, COUNTRY, CITY, GENDER, GSIDE, FIRST, LAST, DOB, HAS_DOB, PHONE, HAS_PHONE = range(1, 12)
    LANG, TIER, GUEST, EPAT, DOMAIN, LOCALDOM, CTYPE, KORD, BUDGET, FAV1, FAV2, ACQ = range(12, 24)
    UPD_T, UPD_KIND, UPD_TIME, UPD_CITY, UPD_PHONE, UPD_TIER, UPD_VAR, UPD_VARCID, UPD_EVAR = range(24, 33)
    BDAY, ODAY, CART, BTYPE, ETIME, CTIME, BRAND, BRANDANY, PROD, PRICE, QTY = range(33, 44)
    SESS, MEDIUM, CAMPAIGN, EVAR, EVARK, MAL, MALK, MALV, RETURNING, FIRSTORDER = range(44, 54)


# --------------------------------------------------------------------------------------------
# SQL helpers


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _lit(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, list):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    return repr(v)


def _expand(pairs: list[tuple[Any, int]]) -> list[Any]:
    return [v for v, w in pairs for _ in range(w)]


class _Sql:
    """Builds the SQL text for one generation run (seed and sizes are baked in as literals)."""

    def __init__(self, seed: int, profiles: int, days: int, start: dt.date, events_per_profile: float):
        self.seed = seed
        self.n = profiles
        self.days = days
        self.start = start
        self.epp = events_per_profile
        self.id_width = max(6, len(str(profiles)))

    # random primitives ---------------------------------------------------------------------
    def h(self, salt: int, *keys: Any) -> str:
        """64-bit pseudo-random UBIGINT from (seed, salt, keys...); keys are non-negative integers.

        DuckDB's multi-argument ``hash(a, b, ...)`` XORs the per-argument hashes, so values drawn
        with different salts would be strongly correlated. Instead the keys are chained through
        the single-argument hash (a full 64-bit mix), starting from a per-(seed, salt) constant.
        """
        expr = f"{_splitmix64(self.seed * 1_000_003 + salt)}::UBIGINT"
        for k in keys:
            expr = f"hash(xor({expr}, ({k})::UBIGINT))"
        return expr

    def i(self, salt: int, n: Any, *keys: Any) -> str:
        """Integer in [0, n)."""
        return f"({self.h(salt, *keys)} % ({n}))::BIGINT"

    def u(self, salt: int, *keys: Any) -> str:
        """Float in [0, 1)."""
        return f"({self.h(salt, *keys)} / 18446744073709551616.0)"

    def pick(self, values: list[Any], salt: int, *keys: Any) -> str:
        return f"{_lit(values)}[1 + {self.i(salt, len(values), *keys)}]"

    def ts(self, seconds_expr: str) -> str:
        """ISO 8601 UTC timestamp string for seconds since the start day's midnight."""
        return f"strftime(TIMESTAMP '{self.start.isoformat()}' + to_seconds({seconds_expr}), '%Y-%m-%dT%H:%M:%SZ')"

    # customers ------------------------------------------------------------------------------
    def customer(self, source: str) -> str:
        """All attributes of customer ``p`` for every row of ``source`` (which has a column p)."""
        country_idx = _expand([(ci, c[1]) for ci, c in enumerate(COUNTRIES)])
        city_lists, geo = [], []
        for c in COUNTRIES:
            idx = []
            for city, tz, w, area in c[7]:
                idx += [len(geo)] * w
                geo.append((city, tz, area))
            city_lists.append(idx)
        group_of_country = [NAME_GROUPS.index(c[3]) for c in COUNTRIES]
        first = [[NAMES[g][0], NAMES[g][1]] for g in NAME_GROUPS]
        last = [NAMES[g][2] for g in NAME_GROUPS]
        # Buyer shares are as in CUSTOMER_TYPES unless events_per_profile is too low to leave
        # room for browsing; then fewer customers buy (none at 0), so the average stays right.
        # Everything is calibrated on what lands inside the window: a customer's horizon is
        # ``days`` long, so on average a share ``in_window`` of it is inside.
        in_window = (self.days + 1) / (2 * self.days)
        first_in = FIRST_ORDER_AT_SIGNUP + (1 - FIRST_ORDER_AT_SIGNUP) * in_window
        probs = [w / 100 for w, _, _, _ in CUSTOMER_TYPES]
        order_events = sum(
            pr * (first_in + ((lo + hi) / 2 - 1) * in_window)
            for pr, (_, lo, hi, _) in zip(probs, CUSTOMER_TYPES, strict=True)
            if hi > 0
        )
        order_events *= 1 + CART_BEFORE_ORDER
        scale = min(1.0, MAX_ORDER_EVENT_SHARE * self.epp / order_events)
        probs = [1 - scale * (1 - probs[0])] + [scale * pr for pr in probs[1:]]
        bounds = [sum(probs[: t + 1]) for t in range(len(probs) - 1)]
        ctype = "CASE " + " ".join(
            f"WHEN {self.u(_S.CTYPE, 'p')} < {b!r} THEN {t}" for t, b in enumerate(bounds)
        ) + f" ELSE {len(bounds)} END"
        browse_mean = max(self.epp - order_events * scale, 0.0)
        mean_w = sum(pr * bw for pr, (_, _, _, bw) in zip(probs, CUSTOMER_TYPES, strict=True))
        browse_in = SIGNUP_DAY_BROWSE_SHARE + (1 - SIGNUP_DAY_BROWSE_SHARE) * in_window
        browse_w = [bw / mean_w * browse_mean / browse_in for _, _, _, bw in CUSTOMER_TYPES]
        brand_pop = _expand([(b, x[1]) for b, x in enumerate(BRANDS)])
        acq = _expand([(s, x[1]) for s, x in enumerate(SOURCES)])
        d, p = self.days, "p"
        l1 = f"""
            ({p} * {d}) // {self.n} AS s,
            {self.i(_S.CREATED, 86400, p)} AS cs,
            {self.pick(country_idx, _S.COUNTRY, p)} AS ci,
            {self.pick(_expand([(0, 47), (1, 45), (2, 3), (3, 5)]), _S.GENDER, p)} AS gc,
            {self.i(_S.GSIDE, 2, p)} AS gside,
            {self.i(_S.FIRST, 10, p)} AS fni,
            {self.i(_S.LAST, 12, p)} AS lni,
            {ctype} AS ctype,
            {self.u(_S.GUEST, p)} < 0.06 AS guest,
            {self.pick(brand_pop, _S.FAV1, p)} AS fav1,
            {self.i(_S.FAV2, len(BRANDS) - 1, p)} AS fav2off,
            {self.pick(acq, _S.ACQ, p)} AS acq"""
        tier = _expand([("bronze", 50), ("silver", 20), ("gold", 7), (None, 23)])
        l2 = f"""
            {_lit(city_lists)}[ci + 1][1 + {self.i(_S.CITY, 10, p)}] AS gi,
            {_lit(group_of_country)}[ci + 1] AS grp,
            CASE WHEN gc < 2 THEN gc ELSE gside END AS gsel,
            (fav1 + 1 + fav2off) % {len(BRANDS)} AS fav2,
            {_lit([lo for _, lo, _, _ in CUSTOMER_TYPES])}[ctype + 1]
              + {self.i(_S.KORD, 1000, p)} % ({_lit([hi - lo + 1 for _, lo, hi, _ in CUSTOMER_TYPES])}[ctype + 1])
              AS k,
            {_lit(browse_w)}[ctype + 1] * (0.25 + 1.5 * {self.u(_S.BUDGET, p)}) AS budget"""
        l3 = f"""
            CASE WHEN guest THEN NULL ELSE 'C' || lpad(({p} + 1)::VARCHAR, {self.id_width}, '0') END
              AS customer_id,
            {_lit(first)}[grp + 1][gsel + 1][fni + 1] AS first_name,
            {_lit(last)}[grp + 1][lni + 1] AS last_name,
            {_lit(['female', 'male', 'other', None])}[gc + 1] AS gender,
            CASE WHEN {self.u(_S.HAS_DOB, p)} < 0.92
              THEN strftime(DATE '1950-01-01' + {self.i(_S.DOB, 365 * 56, p)}::INTEGER, '%Y-%m-%d') END AS dob,
            CASE WHEN {self.u(_S.HAS_PHONE, p)} < 0.85 THEN {self.phone('ci', 'gi', self.h(_S.PHONE, p))} END
              AS phone,
            {_lit([c[0] for c in COUNTRIES])}[ci + 1] AS country,
            {_lit([g[0] for g in geo])}[gi + 1] AS city,
            CASE WHEN {self.u(_S.LANG, p)} < 0.86 THEN {_lit([c[2] for c in COUNTRIES])}[ci + 1]
                 WHEN {self.u(_S.LANG, p)} < 0.96 THEN 'en' END AS language,
            {_lit([g[1] for g in geo])}[gi + 1] AS time_zone,
            {self.pick(tier, _S.TIER, p)} AS loyalty_tier,
            {self.ts('s * 86400 + cs')} AS created_at,
            s * 86400 + cs AS created_sec"""
        # email: unique through the trailing customer number, as in customer_id (names contain no digits)
        ascii_f = "regexp_replace(lower(strip_accents(first_name)), '[^a-z]', '', 'g')"
        ascii_l = "regexp_replace(lower(strip_accents(last_name)), '[^a-z]', '', 'g')"
        pattern = self.i(_S.EPAT, 4, p)
        l4 = f"""
            CASE {pattern}
              WHEN 0 THEN {ascii_f} || '.' || {ascii_l}
              WHEN 1 THEN {ascii_f} || {ascii_l}
              WHEN 2 THEN left({ascii_f}, 1) || '.' || {ascii_l}
              ELSE {ascii_f} || '_' || {ascii_l} END
            || ({p} + 1)::VARCHAR || '@'
            || CASE WHEN {self.u(_S.LOCALDOM, p)} < 0.3 THEN {_lit([c[4] for c in COUNTRIES])}[ci + 1]
                    ELSE {self.pick(MAIL_DOMAINS, _S.DOMAIN, p)} END AS email"""
        sql = f"SELECT *, {l1} FROM ({source})"
        for layer in (l2, l3, l4):
            sql = f"SELECT *, {layer} FROM ({sql})"
        return sql

    def phone(self, ci: str, gi: str, hash_expr: str) -> str:
        geo_area = [area for c in COUNTRIES for _, _, _, area in c[7]]
        return (
            f"{_lit([c[5] for c in COUNTRIES])}[{ci} + 1] || {_lit(geo_area)}[{gi} + 1]"
            f" || right(lpad(({hash_expr} % 1000000000)::VARCHAR, 9, '0'), {_lit([c[6] for c in COUNTRIES])}[{ci} + 1])"
        )

    def email_variant(self, email: str, salt: int, *keys: Any) -> str:
        """Same address, different case and/or surrounding spaces."""
        local, domain = f"split_part({email}, '@', 1)", f"split_part({email}, '@', 2)"
        cap = f"(upper(left({local}, 1)) || substr({local}, 2) || '@' || upper(left({domain}, 1)) || substr({domain}, 2))"
        return f"""CASE {self.i(salt, 5, *keys)}
            WHEN 0 THEN upper({email})
            WHEN 1 THEN '  ' || {email} || ' '
            WHEN 2 THEN {cap}
            WHEN 3 THEN ' ' || {cap} || '  '
            ELSE {email} || ' ' END"""

    # day bounds -----------------------------------------------------------------------------
    def first_customer(self, day: int) -> int:
        """Smallest p signing up on ``day`` or later."""
        return min(self.n, -(-day * self.n // self.days))

    # profiles -------------------------------------------------------------------------------
    def profile_rows(self, day: int) -> str:
        """Valid profile rows of one day, typed, with sort keys: ts, rk, idx."""
        lo, hi = self.first_customer(day), self.first_customer(day + 1)
        n_upd = int(lo * UPDATE_RATE)
        signups = f"""
            SELECT 0 AS rk, p AS idx, customer_id, email, first_name, last_name, gender, dob, phone,
                   country, city, language, time_zone, loyalty_tier, created_at, created_at AS updated_at,
                   created_sec AS ts
            FROM ({self.customer(f'SELECT p FROM range({lo}, {hi}) t(p)')})"""
        if n_upd == 0:
            return signups
        geo_tz, geo_city = [], []
        city_lists = []
        for c in COUNTRIES:
            idx = []
            for city, tz, w, _ in c[7]:
                idx += [len(geo_city)] * w
                geo_city.append(city)
                geo_tz.append(tz)
            city_lists.append(idx)
        ukind = _expand([(k, w) for k, w in UPDATE_KINDS])
        src = f"""SELECT {self.i(_S.UPD_T, lo, day, 'u')} AS p, u,
                         {self.pick(ukind, _S.UPD_KIND, day, 'u')} AS uk,
                         {day * 86400} + {self.i(_S.UPD_TIME, 86400, day, 'u')} AS ts
                  FROM range({n_upd}) t(u)"""
        new_gi = f"{_lit(city_lists)}[ci + 1][1 + {self.i(_S.UPD_CITY, 10, day, 'u')}]"
        new_email = f"""CASE WHEN uk = 'variant' OR {self.u(_S.UPD_EVAR, day, 'u')} < 0.15
                          THEN {self.email_variant('email', _S.UPD_VAR, day, 'u')} ELSE email END"""
        updates = f"""
            SELECT 1 AS rk, u AS idx,
                   CASE WHEN uk = 'variant' AND {self.u(_S.UPD_VARCID, day, 'u')} < 0.35 THEN NULL
                        ELSE customer_id END AS customer_id,
                   {new_email} AS email,
                   CASE WHEN uk = 'variant' THEN first_name END AS first_name,
                   CASE WHEN uk = 'variant' THEN last_name END AS last_name,
                   CASE WHEN uk = 'variant' THEN gender END AS gender,
                   CASE WHEN uk = 'variant' THEN dob END AS dob,
                   CASE WHEN uk = 'phone' THEN {self.phone('ci', 'gi', self.h(_S.UPD_PHONE, day, 'u'))} END AS phone,
                   CASE WHEN uk = 'move' THEN country END AS country,
                   CASE WHEN uk = 'move' THEN {_lit(geo_city)}[{new_gi} + 1] END AS city,
                   CASE WHEN uk = 'variant' THEN language END AS language,
                   CASE WHEN uk = 'move' THEN {_lit(geo_tz)}[{new_gi} + 1] END AS time_zone,
                   CASE WHEN uk = 'tier' THEN {self.pick(['silver'] * 7 + ['gold'] * 3, _S.UPD_TIER, day, 'u')}
                        END AS loyalty_tier,
                   CASE WHEN uk = 'variant' THEN created_at END AS created_at,
                   {self.ts('ts')} AS updated_at,
                   ts
            FROM ({self.customer(src)})"""
        return f"{signups}\nUNION ALL\n{updates}"

    # events ---------------------------------------------------------------------------------
    def event_rows(self, day: int) -> str:
        """Valid event rows of one day, typed, with sort keys: ts, p, ek, j."""
        hi = self.first_customer(day + 1)
        d, days = day, self.days
        scan = f"""
            SELECT p, s, k,
                   budget * ({(1 - SIGNUP_DAY_BROWSE_SHARE) / days!r}
                             + CASE WHEN s = {d} THEN {SIGNUP_DAY_BROWSE_SHARE!r} ELSE 0 END) AS mu
            FROM ({self.customer(f'SELECT p FROM range(0, {hi}) t(p)')})"""
        counts = f"""
            SELECT p, k, s, floor(mu)::BIGINT + ({self.u(_S.BDAY, 'p', d)} < mu - floor(mu))::BIGINT AS nb
            FROM ({scan})"""
        browse = f"SELECT p, 0 AS ek, unnest(range(nb)) AS j FROM ({counts}) WHERE nb > 0"
        orders = f"""
            SELECT p, unnest(CASE WHEN {self.u(_S.CART, 'p', 'j')} < {CART_BEFORE_ORDER} THEN [1, 2] ELSE [2] END)
                   AS ek, j
            FROM (SELECT p, s, unnest(range(k)) AS j FROM ({counts}) WHERE k > 0)
            WHERE s + CASE WHEN j = 0 AND {self.u(_S.FIRSTORDER, "p")} < {FIRST_ORDER_AT_SIGNUP}
                           THEN 0 ELSE {self.i(_S.ODAY, days, "p", "j")} END = {d}"""
        slots = f"SELECT * FROM ({browse}) UNION ALL SELECT * FROM ({orders})"
        # sk: the slot key shared by an order and its add_to_cart (same product, same session)
        btype = _expand([(t, w) for t, w in BROWSE_TYPES])
        low = f"CASE WHEN s = {d} THEN cs ELSE 0 END"
        sk = "CASE WHEN ek = 0 THEN 0 ELSE 1 END"
        layer1 = f"""
            CASE ek WHEN 0 THEN {self.pick(btype, _S.BTYPE, 'p', d, 'j')} WHEN 1 THEN 'add_to_cart'
                    ELSE 'order' END AS event_type,
            {low} + {self.i(_S.ETIME, f'86400 - {low}', 'p', d, sk, 'j')} AS t0,
            {low} AS lowsec,
            {self.u(_S.BRAND, 'p', d, sk, 'j')} AS rb,
            {self.i(_S.PROD, PRODUCTS_PER_BRAND, 'p', d, sk, 'j')} AS m,
            {self.pick(_expand([(1, 75), (2, 18), (3, 7)]), _S.QTY, 'p', d, sk, 'j')} AS qty,
            {self.pick(_expand([(si, x[2]) for si, x in enumerate(SOURCES)]), _S.SESS, 'p', d, sk, 'j')} AS sess_src"""
        brand_pop = _expand([(b, x[1]) for b, x in enumerate(BRANDS)])
        layer2 = f"""
            CASE WHEN rb < 0.55 THEN fav1 WHEN rb < 0.8 THEN fav2
                 ELSE {self.pick(brand_pop, _S.BRANDANY, 'p', d, sk, 'j')} END AS b,
            CASE WHEN ek = 1 THEN greatest(lowsec, t0 - 1 - {self.i(_S.CTIME, 1800, 'p', d, 'j')}) ELSE t0 END AS t,
            CASE WHEN s = {d} OR {self.u(_S.RETURNING, "p", d, sk, "j")} < {RETURN_VIA_FIRST_TOUCH}
                 THEN acq ELSE sess_src END AS src"""
        cats = [_expand(x[2]) for x in BRANDS]
        cat_names = list(CATEGORY_INFO)
        layer3 = f"""
            b * {PRODUCTS_PER_BRAND} + m AS q,
            {_lit(cats)}[b + 1][1 + m % 10] AS category,
            {_lit([x[0] for x in BRANDS])}[b + 1] AS brand"""
        labels = [CATEGORY_INFO[c][0] for c in cat_names]
        bases = [CATEGORY_INFO[c][1] for c in cat_names]
        cat_idx = f"list_position({_lit(cat_names)}, category)"
        price = (
            f"(floor({_lit(bases)}[{cat_idx}] * (0.7 + 0.6 * {self.u(_S.PRICE, 'q')}))::BIGINT - 0.01)"
            "::DECIMAL(10, 2)"
        )
        has_product = "event_type <> 'page_view'"
        has_qty = "event_type IN ('add_to_cart', 'order')"
        src_names = [x[0] for x in SOURCES]
        mediums = [x[3] for x in SOURCES]
        campaigns = [x[4] for x in SOURCES]
        medium = f"{_lit(mediums)}[src + 1][1 + {self.i(_S.MEDIUM, 2, 'p', d, sk, 'j')}]"
        layer4 = f"""
            CASE WHEN {has_product} THEN 'P' || lpad((q + 1)::VARCHAR, 5, '0') END AS product_id,
            CASE WHEN {has_product} THEN brand || ' ' || {_lit(MODEL_WORDS)}[m + 1] || ' '
                 || {_lit(labels)}[{cat_idx}] END AS product_name,
            CASE WHEN {has_product} THEN {price} END AS price,
            CASE WHEN {has_qty} THEN qty END AS quantity,
            CASE WHEN src = {len(SOURCES) - 1} THEN NULL ELSE {_lit(src_names)}[src + 1] END AS utm_source,
            {medium} AS utm_medium"""
        date_tag = (self.start + dt.timedelta(days=d)).strftime("%Y%m%d")
        layer5 = f"""
            'ev-{date_tag}-' || lpad(p::VARCHAR, {self.id_width}, '0') || '-'
              || ['b', 'c', 'o'][ek + 1] || j::VARCHAR AS event_id,
            CASE WHEN {self.u(_S.EVAR, 'p', d, 'ek', 'j')} < {EVENT_EMAIL_VARIANT_RATE}
                 THEN {self.email_variant('email', _S.EVARK, 'p', d, 'ek', 'j')} ELSE email END AS ev_email,
            {self.ts(f'{d * 86400} + t')} AS occurred_at,
            CASE WHEN event_type = 'order' THEN (price * quantity)::DECIMAL(12, 2) END AS revenue,
            CASE WHEN event_type = 'order'
                 THEN 'O' || lpad((p * 8 + j)::VARCHAR, {self.id_width + 1}, '0') END AS order_id,
            CASE WHEN utm_medium IS NULL OR utm_medium = 'organic' THEN NULL
                 ELSE {_lit(campaigns)}[src + 1][1 + {self.i(_S.CAMPAIGN, 3, 'p', d, sk, 'j')}] END AS utm_campaign,
            t + {d * 86400} AS ts"""
        sql = self.customer(slots)
        for layer in (layer1, layer2, layer3, layer4, layer5):
            sql = f"SELECT *, {layer} FROM ({sql})"
        return f"""
            SELECT event_id, ev_email AS email, event_type, occurred_at, product_id, product_name,
                   CASE WHEN event_type <> 'page_view' THEN brand END AS brand,
                   CASE WHEN event_type <> 'page_view' THEN category END AS category,
                   price, quantity, revenue, order_id, utm_source, utm_medium, utm_campaign,
                   ts, p, ek, j
            FROM ({sql})"""


# --------------------------------------------------------------------------------------------
# Malformed rows and rendering


def _malformed_overrides(kind: str, sql: _Sql, keys: tuple[Any, ...], ts_field: str) -> dict[str, str | None]:
    """Field -> replacement SQL (None: field missing) for one malformed kind (not 'structural')."""
    if kind == "bad_email":
        return {"email": sql.pick(list(BAD_EMAILS), _S.MALV, *keys)}
    if kind == "missing_updated_at":
        return {"updated_at": None}
    if kind == "missing_email":
        return {"email": None}
    if kind == "missing_event_id":
        return {"event_id": None}
    if kind == "bad_timestamp":
        return {ts_field: sql.pick(list(BAD_TIMESTAMPS), _S.MALV, *keys)}
    if kind == "wrong_type":
        return {
            "quantity": f"CASE WHEN {sql.u(_S.MALV, *keys)} < 0.5 THEN 'three' END",
            "price": f"CASE WHEN {sql.u(_S.MALV, *keys)} >= 0.5 THEN 'abc' END",
        }
    if kind == "unknown_event_type":
        return {"event_type": sql.pick(list(UNKNOWN_EVENT_TYPES), _S.MALV, *keys)}
    raise ValueError(kind)


def _with_malformed(rows: str, sql: _Sql, keys: tuple[str, ...], rate: float, n_kinds: int) -> str:
    """Follow some valid rows by a malformed copy: adds columns sub (0 valid, 1 broken) and mk."""
    if rate <= 0:
        return f"SELECT *, 0 AS sub, NULL::BIGINT AS mk FROM ({rows})"
    return f"""
        SELECT *, CASE WHEN sub = 1 THEN {sql.i(_S.MALK, n_kinds, *keys)} END AS mk
        FROM (SELECT *, unnest(CASE WHEN {sql.u(_S.MAL, *keys)} < {rate!r} THEN [0, 1] ELSE [0] END) AS sub
              FROM ({rows}))"""


def _csv_quote(expr: str) -> str:
    return (
        f"CASE WHEN {expr} IS NULL THEN '' "
        f"WHEN {expr} = '' OR contains({expr}, ',') OR contains({expr}, '\"') OR contains({expr}, chr(10)) "
        f"OR contains({expr}, chr(13)) OR {expr} <> trim({expr}) "
        f"THEN '\"' || replace({expr}, '\"', '\"\"') || '\"' ELSE {expr} END"
    )


def _render(
    rows: str, fields: list[tuple[str, str]], kinds: tuple[str, ...], fmt: str, sql: _Sql, keys: tuple[str, ...]
) -> str:
    """SELECT producing the file's content: one ``line`` column (ndjson/csv) or the VARCHAR fields."""
    names = [f for f, _ in fields]
    ts_field = "updated_at" if "updated_at" in names else "occurred_at"
    variants: list[tuple[int | None, dict[str, str | None]]] = [(None, {})]
    for ki, kind in enumerate(kinds):
        if kind == "structural":
            continue
        variants.append((ki, _malformed_overrides(kind, sql, keys, ts_field)))
    structural = kinds.index("structural")

    if fmt == "ndjson":

        def obj(over: dict[str, str | None]) -> str:
            parts = []
            for f in names:
                if f in over:
                    if over[f] is not None:
                        parts.append(f"{f} := {over[f]}")
                else:
                    parts.append(f"{f} := {f}")
            packed = f"to_json(struct_pack({', '.join(parts)}))"
            # a profile record leaves out what it does not set (an explicit null would clear it);
            # merging into {} drops the null keys (RFC 7386)
            return f"json_merge_patch('{{}}', {packed})::VARCHAR" if ts_field == "updated_at" else f"{packed}::VARCHAR"

        whens = " ".join(f"WHEN mk = {ki} THEN {obj(over)}" for ki, over in variants[1:])
        valid = obj({})
        cut = f"left({valid}, greatest(12, length({valid}) * 2 // 5))"
        line = f"CASE WHEN mk IS NULL THEN {valid} {whens} WHEN mk = {structural} THEN {cut} END"
        return f"SELECT {line} AS line FROM ({rows})"

    cols = []
    for f, _ in fields:
        whens = " ".join(
            f"WHEN mk = {ki} THEN {over[f] if over[f] is not None else 'NULL'}"
            for ki, over in variants[1:]
            if f in over
        )
        if fmt == "parquet":  # no structural kind in Parquet: use the first kind's overrides instead
            over0 = variants[1][1]
            if f in over0:
                o = over0[f] if over0[f] is not None else "NULL"
                whens += f" WHEN mk = {structural} THEN {o}"
        cols.append(f"CASE {whens} ELSE {f}::VARCHAR END AS {f}" if whens else f"{f}::VARCHAR AS {f}")
    typed = f"SELECT {', '.join(cols)}, mk FROM ({rows})"
    if fmt == "parquet":
        return f"SELECT {', '.join(names)} FROM ({typed})"
    quoted = [_csv_quote(f) for f in names]
    full = " || ',' || ".join(quoted)
    short = " || ',' || ".join(quoted[: max(2, len(quoted) // 2)])
    line = f"CASE WHEN mk = {structural} THEN {short} ELSE {full} END"
    header = ",".join(names)
    return f'SELECT {line} AS "{header}" FROM ({typed})'


# --------------------------------------------------------------------------------------------
# Public API


def _file_path(out: Path, kind: str, day: dt.date, fmt: str) -> Path:
    iso = day.isoformat()
    return out / kind / f"date={iso}" / f"{kind}-{iso}.{fmt}"


def _write(con: duckdb.DuckDBPyConnection, select: str, target: Path, fmt: str) -> None:
    with atomic_path(target) as tmp:
        if fmt == "parquet":
            options = "FORMAT parquet, COMPRESSION zstd"
        else:
            header = "true" if fmt == "csv" else "false"
            options = f"FORMAT csv, HEADER {header}, QUOTE '', ESCAPE '', NEW_LINE '\\n'"
        con.execute(f"COPY ({select}) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' ({options})")


def generate(
    out_dir: str | os.PathLike[str],
    profiles: int,
    days: int,
    seed: int,
    start: str | dt.date,
    fmt: str,
    events_per_profile: float = 3.0,
    malformed_rate: float = 0.002,
    *,
    memory_limit: str = "1500MB",
    threads: int | None = None,
) -> dict[str, Any]:
    """Write the landing files for ``days`` days from ``start`` and return a summary dict."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if profiles < 1 or days < 1:
        raise ValueError("profiles and days must be at least 1")
    if events_per_profile < 0 or not 0 <= malformed_rate <= 1:
        raise ValueError("events_per_profile must be >= 0 and malformed_rate within [0, 1]")
    start_date = start if isinstance(start, dt.date) else dt.date.fromisoformat(start)
    seed = seed % (1 << 63)
    out = Path(out_dir)
    t0 = time.perf_counter()
    sql = _Sql(seed, profiles, days, start_date, events_per_profile)
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "format": fmt,
        "days": days,
        "files": 0,
        "profile_rows": 0,
        "event_rows": 0,
        "malformed_profile_rows": 0,
        "malformed_event_rows": 0,
        "bytes": 0,
    }
    # effective malformed rates: at least ~MIN_MALFORMED_PER_FILE per file when the rate is > 0
    exp_profiles = profiles / days * (1 + UPDATE_RATE * days / 2)
    exp_events = max(profiles * events_per_profile / days, 1.0)
    p_rate = min(1.0, max(malformed_rate, MIN_MALFORMED_PER_FILE / exp_profiles)) if malformed_rate > 0 else 0.0
    e_rate = min(1.0, max(malformed_rate, MIN_MALFORMED_PER_FILE / exp_events)) if malformed_rate > 0 else 0.0

    tmpdir = tempfile.mkdtemp(prefix="segment-generate-")
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": tmpdir})
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute("SET preserve_insertion_order = true")
        for d in range(days):
            day = start_date + dt.timedelta(days=d)
            for kind, rows, fields, kinds, keys, rate in (
                ("profiles", sql.profile_rows(d), PROFILE_FIELDS, PROFILE_MALFORMED_KINDS, ("rk", "idx", d), p_rate),
                ("events", sql.event_rows(d), EVENT_FIELDS, EVENT_MALFORMED_KINDS, ("p", "ek", "j", d), e_rate),
            ):
                rows = _with_malformed(rows, sql, keys, rate, len(kinds))
                if kind == "events":
                    # malformed copies get their own (still unique) event_id
                    rows = f"SELECT * REPLACE (CASE WHEN sub = 1 THEN event_id || '-x' ELSE event_id END AS event_id) FROM ({rows})"
                order = "ts, rk, idx, sub" if kind == "profiles" else "ts, p, ek, j, sub"
                ordered = f"SELECT * FROM ({rows}) ORDER BY {order}"
                target = _file_path(out, kind, day, fmt)
                _write(con, _render(ordered, fields, kinds, fmt, sql, keys), target, fmt)
                total, bad = con.execute(f"SELECT count(*), count(*) FILTER (sub = 1) FROM ({rows})").fetchone()
                summary[f"{kind[:-1]}_rows"] += total
                summary[f"malformed_{kind[:-1]}_rows"] += bad
                summary["files"] += 1
                summary["bytes"] += target.stat().st_size
    finally:
        con.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def generate_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "example", "apparel") == "beauty_shop":
        from segment_pipeline.core.generate_beauty import generate_beauty

        summary = generate_beauty(
            args.out,
            profiles=args.profiles,
            days=args.days,
            seed=args.seed,
            start=args.start,
            events_per_profile=args.events_per_profile,
            dirt=args.malformed_rate > 0,
        )
        print(
            f"wrote {summary['files']} files to {summary['out_dir']} (Shopify CSV + Segment NDJSON, "
            f"{summary['bytes']:,} bytes): {summary['profile_rows']:,} customer rows, "
            f"{summary['event_rows']:,} Segment messages in {summary['seconds']:.1f}s"
        )
        return 0
    summary = generate(
        args.out,
        profiles=args.profiles,
        days=args.days,
        seed=args.seed,
        start=args.start,
        fmt=args.format,
        events_per_profile=args.events_per_profile,
        malformed_rate=args.malformed_rate,
    )
    print(
        f"wrote {summary['files']} files to {summary['out_dir']} ({summary['format']}, {summary['bytes']:,} bytes): "
        f"{summary['profile_rows']:,} profile rows ({summary['malformed_profile_rows']:,} malformed), "
        f"{summary['event_rows']:,} event rows ({summary['malformed_event_rows']:,} malformed) "
        f"in {summary['seconds']:.1f}s"
    )
    return 0
