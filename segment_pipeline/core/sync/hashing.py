"""Hashed email identifiers for ad platforms: each platform's normalization, then SHA-256 as
lowercase hex (64 characters). Raw emails never leave the machine for these destinations: requests
and files carry only the hashes these functions produce.

Two forms of each rule, which the tests keep identical: a Python function (one email) and a DuckDB
expression (a column, for streaming a million rows without per-row Python work).

* **Meta** (Custom Audiences ``EMAIL_SHA256``; the same rule as the Conversions API ``em``
  parameter): "Trim any leading and trailing spaces. Convert all characters to lowercase."
  Example from Meta: ``John_Smith@gmail.com`` -> ``john_smith@gmail.com`` ->
  ``62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f``
  (https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters).
  Meta does not ask to remove dots or ``+`` suffixes in gmail addresses, so we do not.
* **Google** (Customer Match, current rules of the Data Manager API "Format user data" page,
  https://developers.google.com/data-manager/api/devguides/concepts/formatting): convert to
  lowercase; trim leading, trailing *and intermediate* whitespace; for ``gmail.com`` and
  ``googlemail.com`` addresses remove every ``.`` before the ``@`` and remove a ``+`` in the local
  part with everything after it (``cloudy.sanfrancisco+shopping@gmail.com`` ->
  ``cloudysanfrancisco@gmail.com``); other domains keep their dots and ``+``
  (``user.name+NYC@Example.com`` -> ``user.name+nyc@example.com``). The rule changed over time:
  earlier versions of the page (and Google Ads' enhanced-conversions guide) removed only the dots;
  the ``+`` suffix rule is the current one. Examples from Google's Data Manager quickstart
  (https://developers.google.com/data-manager/api/get-started/quickstart): ``dana@example.com`` ->
  ``07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3``, ``DanaM@example.com`` ->
  ``1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7``.

The facts and their pages are also kept beside the fakes
(``segment_pipeline_tests/fakes/specs/meta/FACTS.md``, ``.../google/FACTS.md``).
"""

from __future__ import annotations

import hashlib
import re

#: What "whitespace" means in both forms: the ASCII whitespace characters (DuckDB's ``\\s``).
_WS = re.compile(r"[ \t\n\r\f\v]+")
_EDGE_WS = re.compile(r"^[ \t\n\r\f\v]+|[ \t\n\r\f\v]+$")
GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 bytes of ``text``, as 64 lowercase hex characters."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_email_meta(email: str) -> str:
    """Meta's rule: trim leading/trailing whitespace, lowercase (see the module docstring)."""
    return _EDGE_WS.sub("", email).lower()


def normalize_email_google(email: str) -> str:
    """Google's current Customer Match rule (see the module docstring)."""
    e = _WS.sub("", email).lower()
    local, at, domain = e.rpartition("@")
    if at and domain in GMAIL_DOMAINS:
        return local.split("+", 1)[0].replace(".", "") + "@" + domain
    return e


def meta_email_hash(email: str) -> str:
    return sha256_hex(normalize_email_meta(email))


def google_email_hash(email: str) -> str:
    return sha256_hex(normalize_email_google(email))


def meta_email_hash_sql(column: str = "email") -> str:
    """DuckDB expression equal to :func:`meta_email_hash` of ``column``."""
    return f"sha256(lower(regexp_replace({column}, '^\\s+|\\s+$', '', 'g')))"


def google_email_hash_sql(column: str = "email") -> str:
    """DuckDB expression equal to :func:`google_email_hash` of ``column``."""
    e = f"lower(regexp_replace({column}, '\\s+', '', 'g'))"
    local = f"regexp_replace({e}, '@[^@]*$', '')"
    domain = f"regexp_extract({e}, '@([^@]*)$', 1)"
    norm = (f"CASE WHEN {domain} IN ('gmail.com', 'googlemail.com') "
            f"THEN replace(split_part({local}, '+', 1), '.', '') || '@' || {domain} ELSE {e} END")
    return f"sha256({norm})"
