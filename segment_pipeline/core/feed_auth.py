"""Credentials of the segment API: feed tokens, API keys and signed download URLs (no HTTP here).

* **Feed tokens** authenticate ``GET /segments/export`` (and identity lookups) with HTTP Basic
  ``<identifier>:<token>``, like the reference feed (``nosto:<token>``). A token belongs to one
  identifier (the Basic user name, default ``nosto``); an identifier may hold several tokens
  (rotation: create the new one, switch the partner, revoke the old one).
* **API keys** authenticate ``POST /users/export/segment`` (and identity lookups) with
  ``Authorization: Bearer <key>``.

A credential is shown once, when created, and never stored: the store keeps only its id and an
HMAC-SHA256 of it under a random per-credential salt. Tokens are 256-bit random values, so a fast
keyed hash is enough (no password stretching needed: there is nothing to guess). Verification
compares digests with :func:`hmac.compare_digest`, and an unknown id or identifier is compared
against a dummy digest, so the time taken does not tell which part was wrong.

Formats: ``spf_<id>_<secret>`` (feed token), ``spk_<id>_<secret>`` (API key); ``<id>`` is 10 hex
characters, public (listed by ``tokens list``, logged to say *who* called), ``<secret>`` 43
URL-safe characters.

The store is one JSON file, ``<state dir>/credentials.json`` (mode 0600, its folder created
0700, whatever the umask), where the state dir is ``SEGMENT_PIPELINE_API_STATE`` (default
``<warehouse root>/api_state``). Writers (the CLI) take an
``flock`` and replace the file atomically; the server re-reads it when it changes, so a revoked
credential stops working at the next request, without a restart.

**Signed URLs**: :class:`UrlSigner` signs ``path`` + expiry with HMAC-SHA256 under the key from
``SEGMENT_PIPELINE_API_SIGNING_KEY`` (at least 32 characters). Without that variable the server
uses a random key for its lifetime (URLs then stop working when it restarts).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from segment_pipeline.core.atomic import open_private, private_mkdir, sweep_temporaries, temp_sibling

STATE_ENV = "SEGMENT_PIPELINE_API_STATE"
SIGNING_KEY_ENV = "SEGMENT_PIPELINE_API_SIGNING_KEY"
CREDENTIALS_FILE = "credentials.json"
DEFAULT_IDENTIFIER = "nosto"

FEED = "feed"
API_KEY = "api_key"
_PREFIX = {FEED: "spf", API_KEY: "spk"}
_KIND_OF_PREFIX = {v: k for k, v in _PREFIX.items()}
_TOKEN = re.compile(r"^(sp[fk])_([0-9a-f]{10})_([A-Za-z0-9_\-]{43})$")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DUMMY_SALT = secrets.token_bytes(16)


def state_dir() -> Path:
    """Where the API keeps its state (credentials, export requests, lookup indexes)."""
    value = os.environ.get(STATE_ENV)
    if value:
        return Path(value).expanduser().absolute()
    from segment_pipeline import settings

    return Path(settings.warehouse_root()) / "api_state"


def check_identifier(identifier: str) -> str:
    if not isinstance(identifier, str) or not _IDENTIFIER.match(identifier):
        raise ValueError(
            f"identifier {identifier!r} is invalid: use 1-64 characters from letters, digits, '_', '.', '-'"
        )
    return identifier


def _digest(salt: bytes, token: str) -> str:
    return hmac.new(salt, token.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Credential:
    """One stored credential: everything but the secret (its salted digest only)."""

    id: str
    kind: str  # FEED | API_KEY
    identifier: str  # Basic user name (feed tokens) or a label (API keys)
    salt: str  # hex
    digest: str  # hex HMAC-SHA256(salt, full token)
    created_at: str
    note: str = ""
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict:
        """What may be shown or logged: no salt, no digest."""
        return {k: v for k, v in asdict(self).items() if k not in ("salt", "digest")}


class CredentialStore:
    """The credentials file (see the module docstring). Safe across threads and processes."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else state_dir()
        self.path = self.directory / CREDENTIALS_FILE
        self._cache_key: tuple | None = None
        self._by_id: dict[str, Credential] = {}
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def _load(self) -> dict[str, Credential]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if key != self._cache_key:
                raw = json.loads(self.path.read_bytes() or b"{}")
                self._by_id = {c["id"]: Credential(**c) for c in raw.get("credentials", [])}
                self._cache_key = key
            return self._by_id

    def list(self, kind: str | None = None, include_revoked: bool = False) -> list[Credential]:
        return sorted(
            (c for c in self._load().values() if (kind is None or c.kind == kind) and (include_revoked or c.active)),
            key=lambda c: (c.created_at, c.id),
        )

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Credential]]:
        private_mkdir(self.directory)
        with os.fdopen(open_private(self.directory / ".credentials.lock"), "a") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)
            try:
                self._cache_key = None
                current = dict(self._load())
                yield current
                data = json.dumps({"credentials": [asdict(c) for c in current.values()]}, indent=1).encode()
                tmp = temp_sibling(self.path)  # a killed writer's leftover is swept below
                fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, self.path)
                finally:
                    tmp.unlink(missing_ok=True)
                sweep_temporaries(self.directory, CREDENTIALS_FILE)
                self._cache_key = None
            finally:
                fcntl.flock(lock_fh, fcntl.LOCK_UN)

    def create(self, kind: str, identifier: str, note: str = "") -> tuple[Credential, str]:
        """Create a credential; returns it and the secret token (shown once, never stored)."""
        if kind not in _PREFIX:
            raise ValueError(f"kind must be one of {sorted(_PREFIX)}")
        check_identifier(identifier)
        with self._locked() as current:
            cred_id = secrets.token_hex(5)
            while cred_id in current:
                cred_id = secrets.token_hex(5)
            token = f"{_PREFIX[kind]}_{cred_id}_{secrets.token_urlsafe(32)}"
            salt = secrets.token_bytes(16)
            cred = Credential(
                id=cred_id, kind=kind, identifier=identifier, salt=salt.hex(), digest=_digest(salt, token),
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), note=note,
            )
            current[cred_id] = cred
        return cred, token

    def create_feed_token(self, identifier: str = DEFAULT_IDENTIFIER, note: str = "") -> tuple[Credential, str]:
        return self.create(FEED, identifier, note)

    def create_api_key(self, name: str = "default", note: str = "") -> tuple[Credential, str]:
        return self.create(API_KEY, name, note)

    def revoke(self, cred_id: str, kind: str | None = None) -> Credential | None:
        """Revoke by id (the token itself is also accepted); returns the revoked credential or None."""
        match = _TOKEN.match(cred_id or "")
        if match:
            cred_id = match.group(2)
        with self._locked() as current:
            cred = current.get(cred_id)
            if cred is None or (kind is not None and cred.kind != kind):
                return None
            if cred.active:
                cred = Credential(**{**asdict(cred), "revoked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
                current[cred_id] = cred
            return cred

    # -- verifying ---------------------------------------------------------------------------
    def _verify(self, kind: str, token: str, identifier: str | None) -> Credential | None:
        match = _TOKEN.match(token) if isinstance(token, str) and len(token) < 200 else None
        cred = self._load().get(match.group(2)) if match else None
        usable = cred is not None and cred.active and cred.kind == kind and _KIND_OF_PREFIX[match.group(1)] == kind
        salt = bytes.fromhex(cred.salt) if usable else _DUMMY_SALT
        expected = cred.digest if usable else "0" * 64
        ok = hmac.compare_digest(_digest(salt, token if isinstance(token, str) else ""), expected)
        if identifier is not None:
            want = cred.identifier if usable else "\x00"
            ok = hmac.compare_digest(identifier.encode(), want.encode()) & ok
        return cred if (usable and ok) else None

    def verify_basic(self, identifier: str, token: str) -> Credential | None:
        """The feed token credential for ``identifier:token``, or None (whatever was wrong)."""
        return self._verify(FEED, token, identifier)

    def verify_bearer(self, token: str) -> Credential | None:
        """The API key credential for ``token``, or None."""
        return self._verify(API_KEY, token, None)


# -- signed URLs ---------------------------------------------------------------------------------


def signing_key_from_env() -> bytes | None:
    value = os.environ.get(SIGNING_KEY_ENV)
    if not value:
        return None
    if len(value) < 32:
        raise ValueError(f"{SIGNING_KEY_ENV} must be at least 32 characters long")
    return value.encode()


class UrlSigner:
    """HMAC-SHA256 signatures over ``path`` and an expiry (unix seconds)."""

    def __init__(self, key: bytes | None = None, ttl_seconds: int = 4 * 3600):
        self.key = key or secrets.token_bytes(32)
        self.ephemeral = key is None
        if ttl_seconds < 1:
            raise ValueError("the download URL lifetime must be at least 1 second")
        self.ttl_seconds = int(ttl_seconds)

    def _sig(self, path: str, expires: int) -> str:
        mac = hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, path: str, now: float | None = None) -> tuple[int, str]:
        expires = int((time.time() if now is None else now) + self.ttl_seconds)
        return expires, self._sig(path, expires)

    def verify(self, path: str, expires: str | int | None, sig: str | None, now: float | None = None) -> str:
        """``"ok"``, ``"expired"`` (valid signature, past its expiry) or ``"invalid"``."""
        try:
            exp = int(str(expires))
        except ValueError:
            return "invalid"
        if not isinstance(sig, str) or not hmac.compare_digest(self._sig(path, exp).encode(), sig.encode()):
            return "invalid"
        return "ok" if (time.time() if now is None else now) <= exp else "expired"
