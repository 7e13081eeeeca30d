"""The OpenAPI 3.0 description served at ``/openapi.json`` (kept next to the routes it describes;
a test checks that every route is described and that the document is valid OpenAPI)."""

from __future__ import annotations

from segment_pipeline.core.exports.segment_export import OUTPUT_FORMATS, SUPPORTED_FIELDS

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str, headers: dict | None = None) -> dict:
    out: dict = {"description": description, "content": {"application/json": {"schema": _ERROR}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
_DATE_PARAM = {
    "name": "date", "in": "query", "required": False,
    "schema": {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    "description": "A day (YYYY-MM-DD); default: the latest complete day.",
}


def openapi_spec(server_url: str = "") -> dict:
    spec = {
        "openapi": "3.0.3",
        "info": {
            "title": "segment_pipeline segment API",
            "version": "1.0.0",
            "description": "Pull the daily segment export, look up one identity's segments, and request "
            "per-segment user exports. See docs/api.md.",
        },
        "paths": {
            "/segments/export": {
                "get": {
                    "summary": "The latest complete daily segment export (NDJSON, streamed)",
                    "operationId": "getSegmentExport",
                    "security": [{"feedBasic": []}],
                    "parameters": [
                        _DATE_PARAM,
                        {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                        {"name": "Accept-Encoding", "in": "header", "required": False, "schema": {"type": "string"},
                         "description": "Send 'gzip' for a gzip-encoded response."},
                    ],
                    "responses": {
                        "200": {
                            "description": 'One JSON object per line: {"email": ..., "<identifier>": [segment names]}.',
                            "headers": {
                                "ETag": {"schema": {"type": "string"}},
                                "X-Export-Date": {"schema": {"type": "string", "format": "date"}},
                            },
                            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                        },
                        "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                        "400": _err("Malformed date."),
                        "401": _err("Missing or wrong credentials."),
                        "404": _err("No export (for that date)."),
                        "429": _err("Rate limited.", _RETRY),
                    },
                }
            },
            "/identities/{email}": {
                "get": {
                    "summary": "The segments one identity belongs to",
                    "operationId": "getIdentity",
                    "security": [{"feedBasic": []}, {"apiKey": []}],
                    "parameters": [
                        {"name": "email", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "Normalized like ingestion: trimmed, lowercased."},
                        _DATE_PARAM,
                    ],
                    "responses": {
                        "200": {"description": "The identity and its segments on that day.",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Identity"}}}},
                        "400": _err("Not an email address or malformed date."),
                        "401": _err("Missing or wrong credentials."),
                        "404": _err("Unknown identity, or no data for that date."),
                        "429": _err("Rate limited.", _RETRY),
                    },
                }
            },
            "/users/export/segment": {
                "post": {
                    "summary": "Export one segment's users (queues a Dagster run; the Dagster daemon runs it)",
                    "operationId": "requestSegmentExport",
                    "security": [{"apiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExportRequest"}}},
                    },
                    "responses": {
                        "201": {"description": "Accepted; the export runs in the background.",
                                "headers": {"Location": {"schema": {"type": "string"}}},
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExportAccepted"}}}},
                        "400": _err("Invalid body (unknown fields are listed with the valid ones) or malformed JSON."),
                        "401": _err("Missing or wrong API key."),
                        "404": _err("Unknown segment."),
                        "409": _err("An export of this segment is already running."),
                        "413": _err("Body too large."),
                        "415": _err("Body is not application/json."),
                        "429": _err("Rate limited, or the global cap of concurrent exports is reached.", _RETRY),
                        "503": _err("Dagster unavailable."),
                    },
                }
            },
            "/users/export/segment/{object_prefix}": {
                "get": {
                    "summary": "Progress of an export; its files (signed URLs) once complete",
                    "operationId": "getSegmentExportStatus",
                    "security": [{"apiKey": []}],
                    "parameters": [{"name": "object_prefix", "in": "path", "required": True,
                                    "schema": {"type": "string", "pattern": "^[0-9a-f-]{36}-[0-9]+$"}}],
                    "responses": {
                        "200": {"description": "Status.",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExportStatus"}}}},
                        "400": _err("Malformed object_prefix."),
                        "401": _err("Missing or wrong API key."),
                        "404": _err("Unknown object_prefix."),
                        "429": _err("Rate limited.", _RETRY),
                    },
                }
            },
            "/downloads/{key}": {
                "get": {
                    "summary": "Download one export file (signed URL from the status endpoint; local storage)",
                    "operationId": "downloadExportFile",
                    "parameters": [
                        {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                        {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "The file.", "content": {
                            "application/zip": {"schema": {"type": "string", "format": "binary"}},
                            "application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
                        "403": _err("Invalid or expired signature."),
                        "404": _err("No such file."),
                    },
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenApi",
                                      "responses": {"200": {"description": "OpenAPI 3.0 document."}}}},
            "/healthz": {"get": {"summary": "Liveness", "operationId": "getHealth",
                                 "responses": {"200": {"description": "ok"}}}},
        },
        "components": {
            "securitySchemes": {
                "feedBasic": {"type": "http", "scheme": "basic",
                              "description": "<identifier>:<feed token> (segment-pipeline tokens create)."},
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "API key (segment-pipeline api-keys create)."},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["message"], "properties": {
                    "message": {"type": "string"},
                    "valid_fields": {"type": "array", "items": {"type": "string"}},
                    "object_prefix": {"type": "string"},
                }},
                "Identity": {"type": "object", "required": ["email", "identity_id", "date", "segments"], "properties": {
                    "email": {"type": "string"},
                    "identity_id": {"type": "string"},
                    "date": {"type": "string", "format": "date"},
                    "segments": {"type": "array", "items": {"type": "object", "required": ["id", "name"], "properties": {
                        "id": {"type": "string"}, "name": {"type": "string"}}}},
                }},
                "ExportRequest": {"type": "object", "required": ["segment_id", "fields_to_export"],
                                  "additionalProperties": False, "properties": {
                    "segment_id": {"type": "string"},
                    "fields_to_export": {"type": "array", "minItems": 1,
                                         "items": {"type": "string", "enum": list(SUPPORTED_FIELDS)}},
                    "output_format": {"type": "string", "enum": sorted(OUTPUT_FORMATS), "default": "zip"},
                    "callback_endpoint": {"type": "string", "format": "uri"},
                }},
                "ExportAccepted": {"type": "object", "required": ["message", "object_prefix"], "properties": {
                    "message": {"type": "string", "enum": ["success"]},
                    "object_prefix": {"type": "string"},
                    "url": {"type": "string", "description": "Status URL of this export (local storage mode)."},
                }},
                "ExportStatus": {"type": "object", "required": ["object_prefix", "segment_id", "status", "files"],
                                 "properties": {
                    "object_prefix": {"type": "string"},
                    "segment_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["queued", "running", "complete", "failed", "canceled"]},
                    "as_of": {"type": "string", "format": "date"},
                    "members": {"type": "integer", "nullable": True},
                    "files_written": {"type": "integer"},
                    "expected_files": {"type": "integer", "nullable": True},
                    "urls_expire_at": {"type": "integer", "description": "Unix time the file URLs expire."},
                    "message": {"type": "string"},
                    "files": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "lines": {"type": "integer"}, "bytes": {"type": "integer"},
                        "url": {"type": "string"}}}},
                }},
            },
        },
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec
