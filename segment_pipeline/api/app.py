"""The HTTP layer of the segment API (Starlette): routing, auth headers, responses. Thin on purpose:
credentials, signing, validation, rate limits, lookups and export admission live in the plain
``segment_pipeline.core.api_*`` / ``feed_auth`` modules.

Endpoints (see ``docs/api.md`` and ``GET /openapi.json``)::

    GET  /segments/export[?date=YYYY-MM-DD]           Basic <identifier>:<feed token>; NDJSON stream
    GET  /identities/{email}[?date=YYYY-MM-DD]         Basic feed token or Bearer API key
    POST /users/export/segment                         Bearer API key; queues a Dagster run
    GET  /users/export/segment/{object_prefix}         Bearer API key; progress and signed file URLs
    GET  /downloads/{key}?expires=..&sig=..            signed URL (local storage only)
    GET  /openapi.json, GET /healthz                   no auth

Logs: one access line per request (method, path with emails masked, status, bytes, duration,
credential id), never query strings (signatures), headers (credentials) or bodies. Control
characters in anything logged are escaped (:mod:`segment_pipeline.api.logs`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import threading
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from segment_pipeline.api import logs
from segment_pipeline.api.config import ApiSettings, storage_from_env
from segment_pipeline.api.openapi import openapi_spec
from segment_pipeline.core.api_exports import ExportService
from segment_pipeline.core.api_identity import IdentityIndex, is_email, normalize_email
from segment_pipeline.core.api_ratelimit import RateLimiter
from segment_pipeline.core.api_requests import (
    RequestError,
    escape_control,
    mask_email,
    mask_emails_in,
    parse_date,
    parse_json_object,
)
from segment_pipeline.core.exports.daily_feed import daily_key, read_latest
from segment_pipeline.core.exports.keys import UnsafeKeyError, check_key
from segment_pipeline.core.exports.segment_export import (
    EXPORT_PREFIX,
    SegmentExportRequest,
    SegmentExportRequestError,
    model_fields,
    parse_object_prefix,
)
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage
from segment_pipeline.core.feed_auth import Credential, CredentialStore, UrlSigner
from segment_pipeline.core.warehouse import Warehouse

log = logging.getLogger("segment_pipeline.api")

CHUNK_BYTES = 256 * 1024
NDJSON = "application/x-ndjson"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


class Services:
    """Everything the handlers use, built once per app."""

    def __init__(
        self,
        settings: ApiSettings,
        storage: ExportStorage | None = None,
        launcher_factory: Callable[[], Any] | None = None,
    ):
        self.settings = settings
        self.storage = storage or storage_from_env()
        self.warehouse = Warehouse(settings.warehouse_root)
        self.credentials = CredentialStore(settings.state_dir)
        self.signer = UrlSigner(settings.signing_key, settings.url_ttl_seconds)
        self.limiter = RateLimiter(settings.rate_per_second, settings.burst)
        per_minute = settings.auth_failures_per_minute
        self.auth_failures = RateLimiter(per_minute / 60.0, max(1, int(per_minute)))
        self.identities = IdentityIndex(
            self.warehouse, settings.state_dir / "identity_index", recheck_seconds=settings.recheck_seconds
        )
        self._launcher_factory = launcher_factory
        self._exports: ExportService | None = None
        self._exports_lock = threading.Lock()

    def close(self) -> None:
        """Release what the export launcher holds (its in-process view of the code location)."""
        with self._exports_lock:
            if self._exports is not None:
                close = getattr(self._exports.launcher, "close", None)
                if close is not None:
                    close()
                self._exports = None

    @property
    def exports(self) -> ExportService:
        with self._exports_lock:
            if self._exports is None:
                from segment_pipeline.api.launch import LauncherConfigError, launcher_from_settings

                try:
                    if self._launcher_factory is not None:
                        launcher = self._launcher_factory()
                    else:
                        launcher = launcher_from_settings(self.settings.dagster_url, self.settings.dagster_location)
                except LauncherConfigError as exc:
                    log.error("segment exports are unavailable: %s", exc)
                    raise RequestError(503, f"segment exports are unavailable: {exc}") from None
                self._exports = ExportService(
                    self.storage, self.warehouse, self.settings.state_dir, launcher,
                    max_concurrent=self.settings.max_concurrent_exports,
                    stale_after=self.settings.lock_stale_after_seconds,
                )
            return self._exports


def _svc(request: Request) -> Services:
    return request.app.state.services


def _base_url(request: Request) -> str:
    return _svc(request).settings.public_url or str(request.base_url).rstrip("/")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# -- auth ------------------------------------------------------------------------------------------


def _unauthorized(scheme: str) -> ApiError:
    challenge = 'Basic realm="segments", charset="UTF-8"' if scheme == "basic" else 'Bearer realm="segments"'
    return ApiError(401, "unauthorized", {"WWW-Authenticate": challenge})


def _authenticate(request: Request, schemes: tuple[str, ...]) -> Credential:
    """The credential behind the Authorization header (one of ``schemes``), rate limits applied."""
    svc = _svc(request)
    client = _client(request)
    wait = svc.auth_failures.peek("ip:" + client)
    if wait:
        log.warning("refused %s from %s: too many failed authentications", request.url.path.split("/")[1], client)
        raise ApiError(429, "too many failed authentication attempts; retry later",
                       {"Retry-After": RateLimiter.retry_after_header(wait)})
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    cred = None
    if scheme == "basic" and "basic" in schemes:
        try:
            user, sep, token = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user, sep, token = "", "", ""
        if sep:
            cred = svc.credentials.verify_basic(user, token)
    elif scheme == "bearer" and "bearer" in schemes:
        cred = svc.credentials.verify_bearer(value.strip())
    if cred is None:
        svc.auth_failures.hit("ip:" + client)
        log.warning("authentication failed from %s (%s)", client, "no credentials" if not header else "rejected")
        raise _unauthorized(schemes[0])
    request.state.principal = cred.id
    wait = svc.limiter.hit("cred:" + cred.id)
    if wait:
        log.warning("rate limit: credential %s throttled", cred.id)
        raise ApiError(429, "rate limit exceeded; slow down", {"Retry-After": RateLimiter.retry_after_header(wait)})
    return cred


# -- streaming files -------------------------------------------------------------------------------


def _etag(*parts: object) -> str:
    return '"' + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32] + '"'


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return etag in wanted


def _accepts_gzip(accept_encoding: str | None) -> bool:
    for item in (accept_encoding or "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip"):
            q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def _open_export(storage: ExportStorage, key: str) -> tuple[BinaryIO, int, str]:
    """(open stream, size, etag of the identity encoding); FileNotFoundError if absent."""
    if isinstance(storage, LocalExportStorage):
        fh = open(storage.path(key), "rb")  # noqa: SIM115 - closed by the streaming generator
        st = os.fstat(fh.fileno())
        return fh, st.st_size, _etag(key, st.st_ino, st.st_size, st.st_mtime_ns)
    modified = storage.last_modified(key)
    if modified is None:
        raise FileNotFoundError(key)
    size = storage.size(key)
    stack = contextlib.ExitStack()
    body = stack.enter_context(storage.open_read(key))
    body.close_stack = stack  # type: ignore[attr-defined]
    return body, size, _etag(key, size, modified.isoformat())


async def _file_chunks(fh: BinaryIO, gzip_level: int | None) -> AsyncIterator[bytes]:
    compressor = zlib.compressobj(gzip_level, zlib.DEFLATED, 31) if gzip_level is not None else None

    def next_chunk() -> bytes | None:
        data = fh.read(CHUNK_BYTES)
        if compressor is None:
            return data or None
        if not data:
            return None
        return compressor.compress(data)

    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next_chunk)
            if chunk is None:
                break
            if chunk:
                yield chunk
        if compressor is not None:
            yield compressor.flush()
    finally:
        stack = getattr(fh, "close_stack", None)
        if stack is not None:
            stack.close()
        else:
            fh.close()


async def _serve_file(
    request: Request, key: str, headers: dict[str, str], media_type: str = NDJSON, allow_gzip: bool = True
) -> Response:
    svc = _svc(request)
    try:
        fh, size, etag = await run_in_threadpool(_open_export, svc.storage, key)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(404, "no such export file") from None
    gzip_wanted = allow_gzip and _accepts_gzip(request.headers.get("accept-encoding"))
    if gzip_wanted:
        etag = etag[:-1] + '-gzip"'
    headers = {**headers, "ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "private, no-cache"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        fh.close()
        return Response(status_code=304, headers=headers)
    if gzip_wanted:
        headers["Content-Encoding"] = "gzip"
    else:
        headers["Content-Length"] = str(size)
    return StreamingResponse(
        _file_chunks(fh, svc.settings.gzip_level if gzip_wanted else None), headers=headers, media_type=media_type
    )


# -- endpoints ---------------------------------------------------------------------------------------


async def segments_export(request: Request) -> Response:
    """The latest complete daily feed (or that of ``date``), streamed."""
    _authenticate(request, ("basic",))
    svc = _svc(request)
    identifier = svc.settings.identifier
    day = parse_date(request.query_params.get("date"))
    if day is None:
        pointer = await run_in_threadpool(read_latest, svc.storage, identifier)
        if not pointer:
            raise ApiError(404, "no daily export has been published yet")
        day = parse_date(str(pointer.get("date")))
    key = daily_key(identifier, day)
    headers = {
        "Content-Disposition": f'attachment; filename="{day.isoformat()}.json"',
        "X-Export-Date": day.isoformat(),
    }
    return await _serve_file(request, key, headers)


def identity(request: Request) -> Response:
    _authenticate(request, ("basic", "bearer"))
    svc = _svc(request)
    raw = request.path_params["email"]
    email = normalize_email(raw)
    if not is_email(email):
        raise ApiError(400, "not a valid email address")
    day = parse_date(request.query_params.get("date"))
    if day is None:
        day = svc.identities.latest_day()
        if day is None:
            raise ApiError(404, "no segment memberships exist yet")
    elif not svc.identities.has_day(day):
        raise ApiError(404, f"no segment data for {day.isoformat()}")
    found = svc.identities.lookup(email, day)
    if found is None:
        log.info("identity %s unknown on %s", mask_email(email), day)
        raise ApiError(404, f"unknown identity on {day.isoformat()}")
    return JSONResponse(found)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        if declared > limit:
            raise ApiError(413, f"request body too large (limit {limit} bytes)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"request body too large (limit {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _status_url(request: Request) -> Callable[[str], str]:
    base = _base_url(request)
    return lambda object_prefix: f"{base}/users/export/segment/{object_prefix}"


async def request_segment_export(request: Request) -> Response:
    cred = _authenticate(request, ("bearer",))
    svc = _svc(request)
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise ApiError(415, "send the request body as application/json")
    body = parse_json_object(await _read_body(request, svc.settings.max_body_bytes), svc.settings.max_body_bytes)
    try:
        model = svc.warehouse.model
        export_request = SegmentExportRequest.parse(body, model=model)
    except SegmentExportRequestError as exc:
        extra = {"valid_fields": model_fields(model)} if "fields_to_export" in str(exc) else {}
        raise ApiError(400, str(exc), **extra) from None
    status_url = _status_url(request)
    record = await run_in_threadpool(
        lambda: svc.exports.submit(export_request, cred.id, status_url=status_url)
    )
    log.info(
        "segment export accepted: segment=%r object_prefix=%s run=%s by %s",
        record.segment_id, record.object_prefix, record.run_id, cred.id,
    )
    payload: dict[str, Any] = {"message": "success", "object_prefix": record.object_prefix}
    if svc.storage.kind != "s3":
        payload["url"] = status_url(record.object_prefix)
    return JSONResponse(payload, status_code=201, headers={"Location": status_url(record.object_prefix)})


def _file_url(request: Request, key: str) -> tuple[str, int]:
    svc = _svc(request)
    if svc.storage.kind == "s3":
        client = svc.storage.client  # type: ignore[attr-defined]
        url = client.generate_presigned_url(
            "get_object",
            Params={"Bucket": svc.storage.bucket, "Key": svc.storage.object_key(key)},  # type: ignore[attr-defined]
            ExpiresIn=svc.settings.url_ttl_seconds,
        )
        return url, int(time.time()) + svc.settings.url_ttl_seconds
    path = "/downloads/" + key
    expires, sig = svc.signer.sign(path)
    return f"{_base_url(request)}/downloads/{urllib.parse.quote(key, safe='/')}?expires={expires}&sig={sig}", expires


def export_status(request: Request) -> Response:
    _authenticate(request, ("bearer",))
    svc = _svc(request)
    object_prefix = request.path_params["object_prefix"]
    try:
        parse_object_prefix(object_prefix)
    except ValueError:
        raise ApiError(400, "object_prefix must look like '<uuid4>-<unix seconds>'") from None
    record = svc.exports.get(object_prefix)
    if record is None:
        raise ApiError(404, "unknown object_prefix")
    progress = svc.exports.progress(record)
    files = []
    expires_at = None
    for f in progress.files:
        url, expires_at = _file_url(request, f["key"])
        files.append({"name": f["key"].rsplit("/", 1)[1], "lines": f["lines"], "bytes": f["bytes"], "url": url})
    payload = {
        "object_prefix": record.object_prefix,
        "segment_id": record.segment_id,
        "status": progress.status,
        "as_of": record.as_of,
        "members": progress.members,
        "files_written": progress.files_written,
        "expected_files": progress.expected_files,
        "files": files,
    }
    if expires_at is not None:
        payload["urls_expire_at"] = expires_at
    if progress.message:
        payload["message"] = progress.message
    return JSONResponse(payload)


async def download(request: Request) -> Response:
    svc = _svc(request)
    if svc.storage.kind == "s3":
        raise ApiError(404, "downloads are served by S3 (presigned URLs) in this deployment")
    key = request.path_params["key"]
    try:
        check_key(key)
    except UnsafeKeyError:
        log.warning("download refused from %s: unsafe key", _client(request))
        raise ApiError(404, "no such export file") from None
    verdict = svc.signer.verify("/downloads/" + key, request.query_params.get("expires"), request.query_params.get("sig"))
    if verdict != "ok" or not key.startswith(EXPORT_PREFIX + "/") or key.count("/") != 4:
        log.warning("download refused from %s: %s signature", _client(request), verdict)
        raise ApiError(403, "this download URL has expired" if verdict == "expired" else "invalid download URL")
    name = key.rsplit("/", 1)[1]
    media_type = "application/zip" if name.endswith(".zip") else "application/gzip"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return await _serve_file(request, key, headers, media_type=media_type, allow_gzip=False)


def openapi(request: Request) -> Response:
    return JSONResponse(openapi_spec(_base_url(request)))


def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# -- app ----------------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"message": exc.message, **exc.extra}, status_code=exc.status, headers=exc.headers)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    headers = {"Retry-After": str(exc.extra["retry_after"])} if "retry_after" in exc.extra else {}
    if exc.status in (409, 429, 503):
        cause = exc.__cause__
        log.warning("segment export refused (%s): %s%s", exc.status, exc.message,
                    f" ({type(cause).__name__}: {str(cause).strip()[:500]})" if cause is not None else "")
    extra = {k: v for k, v in exc.extra.items() if k != "retry_after"}
    return JSONResponse({"message": exc.message, **extra}, status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"message": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s: %s", request.method, mask_emails_in(request.url.path), type(exc).__name__)
    return JSONResponse({"message": "internal server error"}, status_code=500)


class AccessLog:
    """Pure ASGI middleware: one line per request, emails masked, control characters escaped, no
    query string or headers. ``scope["path"]`` is already percent-decoded by the server: it is
    escaped as it is, never decoded a second time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen = {"status": 0, "bytes": 0}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            principal = scope.get("state", {}).get("principal", "-")
            log.info(
                "%s %s %s %dB %.1fms cred=%s",
                escape_control(scope["method"]), mask_emails_in(escape_control(scope["path"])), seen["status"] or "-",
                seen["bytes"], (time.perf_counter() - started) * 1000, principal,
            )


def create_app(
    settings: ApiSettings | None = None,
    *,
    storage: ExportStorage | None = None,
    launcher_factory: Callable[[], Any] | None = None,
) -> Starlette:
    settings = settings or ApiSettings.from_env()
    logs.install()
    services = Services(settings, storage, launcher_factory)
    if services.signer.ephemeral:
        log.warning(
            "SEGMENT_PIPELINE_API_SIGNING_KEY is not set: download URLs are signed with a random key and stop "
            "working when this server restarts"
        )
    routes = [
        Route("/segments/export", segments_export, methods=["GET"]),
        Route("/identities/{email}", identity, methods=["GET"]),
        Route("/users/export/segment", request_segment_export, methods=["POST"]),
        Route("/users/export/segment/{object_prefix}", export_status, methods=["GET"]),
        Route("/downloads/{key:path}", download, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(services.close)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            RequestError: _request_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.services = services
    app.add_middleware(AccessLog)
    return app
