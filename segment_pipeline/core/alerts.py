"""Failure alerts: a concise message (run, assets, error, link) posted to a webhook.

The payload is Slack-compatible (``{"text": ...}``; Microsoft Teams and most chat webhooks accept
it too) and carries the same facts as fields for machines. The webhook URL is a secret (it
usually embeds a token): it comes from the environment only and is never logged or put in an
error message. No Dagster here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

WEBHOOK_ENV = "SEGMENT_PIPELINE_ALERT_WEBHOOK_URL"
UI_URL_ENV = "SEGMENT_PIPELINE_UI_URL"
DEFAULT_UI_URL = "http://localhost:3000"
MAX_ERROR_CHARS = 300
MAX_ASSETS_LISTED = 8


def webhook_url() -> str | None:
    """The configured webhook, or None (then nothing is sent)."""
    return os.environ.get(WEBHOOK_ENV, "").strip() or None


def ui_url() -> str:
    return (os.environ.get(UI_URL_ENV, "").strip() or DEFAULT_UI_URL).rstrip("/")


def short_error(message: str | None) -> str:
    """First meaningful line of an error, bounded."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@dataclass
class FailureAlert:
    run_id: str
    job_name: str
    error: str
    assets: list[str] = field(default_factory=list)
    partitions: str | None = None  # "2026-11-03" or "2026-11-01..2026-11-14"
    base_url: str = DEFAULT_UI_URL

    @property
    def link(self) -> str:
        return f"{self.base_url.rstrip('/')}/runs/{self.run_id}"

    def text(self) -> str:
        assets = ", ".join(self.assets[:MAX_ASSETS_LISTED])
        if len(self.assets) > MAX_ASSETS_LISTED:
            assets += f" (+{len(self.assets) - MAX_ASSETS_LISTED} more)"
        parts = [f"Dagster run failed: {self.job_name} (run {self.run_id[:8]})"]
        if assets:
            parts.append(f"assets: {assets}")
        if self.partitions:
            parts.append(f"partitions: {self.partitions}")
        parts.append(f"error: {short_error(self.error)}")
        parts.append(self.link)
        return "\n".join(parts)

    def payload(self) -> dict:
        return {
            "text": self.text(),
            "run_id": self.run_id,
            "job": self.job_name,
            "assets": self.assets,
            "partitions": self.partitions,
            "error": short_error(self.error),
            "link": self.link,
        }


def describe(url: str) -> str:
    """A loggable name for a webhook: scheme and host only (path and query hold the token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def post_alert(url: str, alert: FailureAlert, timeout: float = 10.0) -> int:
    """POST the alert; returns the HTTP status. Errors name the host, never the URL."""
    try:
        response = requests.post(url, json=alert.payload(), timeout=timeout)
    except requests.RequestException as exc:
        raise AlertError(f"alert webhook {describe(url)} unreachable: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise AlertError(f"alert webhook {describe(url)} answered HTTP {response.status_code}")
    return response.status_code


class AlertError(RuntimeError):
    pass
