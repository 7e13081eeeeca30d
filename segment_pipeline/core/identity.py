"""Email identity: one normalization and one validation rule, in SQL (ingestion) and Python (API).

An identity is a customer's normalized email. Ingestion evaluates the rule vectorized in DuckDB
(:func:`strip_sql`, :func:`normalize_sql`, :func:`problem_sql`, no Python per row) and the API's
identity lookup evaluates the same rule in Python (:func:`normalize_email`, :func:`email_problem`);
both are generated from the tables below, and the tests run both over one table of cases.

Normalization
    1. Strip, at both ends, Unicode white space (``White_Space``: tab, newline, NBSP, the
       U+2000 spaces, ideographic space, ...) and invisible format characters (soft hyphen,
       U+180E, zero-width space/joiners U+200B..U+200D, direction marks U+200E/U+200F and
       embeddings U+202A..U+202E, word joiner U+2060 and U+2061..U+206F, BOM U+FEFF):
       :data:`STRIP_CHARS`.
    2. Lowercase (ASCII letters; a valid address has no others).

Validation (of the stripped text; the first problem found names the reason, ``"email: ..."``)
    What Klaviyo and dotdigital accept, a subset of RFC 5321/5322: a dot-atom local part of at
    most 64 characters (letters, digits and ``!#$%&'*+/=?^_`{|}~-``, dots only between them: no
    leading, trailing or consecutive dot), one ``@``, a domain of dot-separated labels of at most
    63 letters, digits and hyphens that neither start nor end with a hyphen, a top-level domain of
    at least 2 letters (or an IDNA ``xn--`` label), at most 254 characters in all. No quoted local
    parts, comments or IP-literal domains. White space, invisible or control characters inside
    the address, a JSON array or object, or a NUL make it invalid.

Internationalized addresses (decision)
    Addresses must be ASCII. A Unicode local part (RFC 6531, SMTPUTF8) or a Unicode domain is
    rejected with ``"email: non-ASCII character ..."``: we cannot confirm that Klaviyo and
    dotdigital deliver to them, and a Unicode domain and its punycode form would otherwise be two
    identities of one customer. Deliver IDN domains in their ASCII (punycode, ``xn--...``) form,
    which is accepted.

Sources: RFC 5321 section 4.5.3.1 (64-octet local part, 255-octet domain; 254 characters is the
limit of a forward/reverse path without its angle brackets), RFC 5322 section 3.2.3 (dot-atom,
atext), RFC 1035 section 2.3.1 / RFC 1123 section 2.1 (labels: letters, digits, hyphens, 63
characters), RFC 3492 / RFC 5890 (``xn--`` A-labels).
"""

from __future__ import annotations

import re

#: Unicode White_Space (PropList.txt) and invisible format characters stripped at both ends.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
FORMAT_CHARS = (
    "\xad\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    + "".join(chr(c) for c in range(0x2060, 0x2070) if c != 0x2065)
    + "\ufeff"
)
STRIP_CHARS = WHITESPACE + FORMAT_CHARS

_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TLD = "([A-Za-z]{2,63}|[Xx][Nn]--[A-Za-z0-9-]{0,58}[A-Za-z0-9])"
#: A valid address fully matches this shape and has at most 64 characters before the @ and 254 in
#: all (the fast path: only the other values run the rules).
VALID_SHAPE = f"[{_ATEXT}]+(\\.[{_ATEXT}]+)*@({_LABEL}\\.)+{_TLD}"
MAX_LOCAL, MAX_LENGTH = 64, 254

#: Ordered (reason, pattern, problem when) rules: a rule finds a problem when ``re.search``
#: of the pattern in the stripped address is True (``when=True``) or False (``when=False``).
#: Patterns use the syntax common to Python ``re`` and RE2 (DuckDB); ``{S}`` stands for the
#: class of :data:`STRIP_CHARS`, rendered for each engine.
RULES: tuple[tuple[str, str, bool], ...] = (
    ("email: only white space or invisible characters", "^$", True),
    ("email: control character", "[\\x00-\\x08\\x0e-\\x1f\\x7f-\\x84\\x86-\\x9f]", True),
    ("email: a JSON array or object, not an address", "^(\\[.*\\]|\\{.*\\})$", True),
    ("email: white space or invisible character inside the address", "[{S}]", True),
    ("email: no @", "@", False),
    ("email: more than one @", "@.*@", True),
    ("email: non-ASCII character (internationalized addresses are not supported; "
     "give IDN domains in punycode, xn--...)", "[^\\x00-\\x7f]", True),
    ("email: empty local part (nothing before the @)", "^@", True),
    ("email: empty domain (nothing after the @)", "@$", True),
    ("email: local part longer than 64 characters", "^[^@]{65,}@", True),
    ("email: longer than 254 characters", "^.{255,}$", True),
    ("email: local part starts with a dot", "^\\.", True),
    ("email: local part ends with a dot", "\\.@", True),
    ("email: consecutive dots", "\\.\\.", True),
    ("email: invalid character in the local part", f"^[.{_ATEXT}]*[^@.{_ATEXT}]", True),
    ("email: domain starts with a dot", "@\\.", True),
    ("email: domain ends with a dot", "\\.$", True),
    ("email: invalid character in the domain", "@.*[^A-Za-z0-9.-]", True),
    ("email: domain has no top-level domain (no dot)", "@[^.]*$", True),
    ("email: domain label starts or ends with a hyphen", "@-|@.*\\.-|@.*-\\.|-$", True),
    ("email: domain label longer than 63 characters", "@(.*\\.)?[^.]{64,}(\\.|$)", True),
    ("email: top-level domain must be at least 2 letters", f"\\.{_TLD}$", False),
)
#: Reason when no rule names the problem (should not happen: the tests check it never does).
FALLBACK = "email: invalid address"


def _py_class(chars: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in chars)


def _re2_class(chars: str) -> str:
    return "".join(f"\\x{{{ord(c):04x}}}" for c in chars)


def _py(pattern: str) -> str:
    return pattern.replace("{S}", _py_class(STRIP_CHARS))


def _re2(pattern: str) -> str:
    return pattern.replace("{S}", _re2_class(STRIP_CHARS))


_PY_VALID = re.compile(VALID_SHAPE)
_PY_RULES = tuple((reason, re.compile(_py(p)), when) for reason, p, when in RULES)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# -- Python (API lookups) ------------------------------------------------------------------------


def strip_email(raw: str) -> str:
    """``raw`` without white space and invisible format characters at either end."""
    return raw.strip(STRIP_CHARS)


def normalize_email(raw: str) -> str:
    """The identity key of ``raw``: stripped, ASCII letters lowercased (as ingestion stores it).

    For a valid address this equals what ingestion writes to ``raw_*.email``; for an invalid one
    (see :func:`email_problem`) there is no identity.
    """
    return strip_email(raw).translate(_ASCII_LOWER)


def email_problem(raw: str) -> str | None:
    """None if ``raw`` (stripped) is a valid address, else the reason, e.g. ``"email: consecutive dots"``.

    Case does not matter (a normalized or a raw address gives the same answer).
    """
    value = strip_email(raw)
    if _PY_VALID.fullmatch(value) and len(value) <= MAX_LENGTH and value.index("@") <= MAX_LOCAL:
        return None
    for reason, pattern, when in _PY_RULES:
        if bool(pattern.search(value)) == when:
            return reason
    return FALLBACK


def is_email(raw: str) -> bool:
    """True if ``raw`` is a valid address once stripped (:func:`email_problem` is None)."""
    return email_problem(raw) is None


# -- SQL (ingestion, vectorized in DuckDB) -------------------------------------------------------


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def strip_sql(column: str) -> str:
    """SQL: ``column`` stripped of :data:`STRIP_CHARS` at both ends (DuckDB ``trim(s, chars)``).

    ``trim`` with a character set is slow, so values that start and end with a printable ASCII
    character (nearly all; such values have nothing to strip) skip it. Strings compare bytewise:
    every non-ASCII character's UTF-8 bytes sort after ``~``. The character set is one string
    literal (the characters themselves), not a concatenation of ``chr()`` calls: ingestion strips
    every mapped field in one query, and binding those calls was a sizeable part of its planning.
    """
    chars = _sql_string(STRIP_CHARS)
    return (
        f"CASE WHEN left({column}, 1) BETWEEN '!' AND '~' AND right({column}, 1) BETWEEN '!' AND '~' "
        f"THEN {column} ELSE trim({column}, {chars}) END"
    )


def normalize_sql(stripped: str) -> str:
    """SQL: the identity key from an already stripped expression (``lower``; valid addresses are ASCII)."""
    return f"lower({stripped})"


def problem_sql(stripped: str) -> str:
    """SQL: NULL when the stripped expression is a valid address, else the reason (VARCHAR).

    The same rules as :func:`email_problem`, evaluated in RE2: the :data:`VALID_SHAPE` full match
    and the lengths for every row, the ordered rules only for the rows that fail them.
    """
    whens = " ".join(
        f"WHEN {'' if when else 'NOT '}regexp_matches({stripped}, {_sql_string(_re2(p))}) THEN {_sql_string(reason)}"
        for reason, p, when in RULES
    )
    return (
        f"CASE WHEN {stripped} IS NULL THEN NULL "
        f"WHEN regexp_full_match({stripped}, {_sql_string(VALID_SHAPE)}) AND length({stripped}) <= {MAX_LENGTH} "
        f"AND strpos({stripped}, '@') <= {MAX_LOCAL + 1} THEN NULL "
        f"{whens} ELSE {_sql_string(FALLBACK)} END"
    )
