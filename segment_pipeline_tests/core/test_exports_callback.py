"""Callback poster against a real loopback HTTP server that fails at first."""

from __future__ import annotations

import pytest

from segment_pipeline.core.exports.callback import post_callback, redact
from segment_pipeline_tests.fakes.callback import callback_server


def test_retries_until_delivered():
    sleeps: list[float] = []
    with callback_server(fail_first=3) as hook:
        result = post_callback(hook.url, {"success": True}, attempts=5, backoff_seconds=0.01, sleep=sleeps.append)
    assert result.delivered and result.attempts == 4 and result.status_code == 200
    assert sleeps == [0.01, 0.02, 0.04]
    assert hook.received == [{"success": True}]


def test_dropped_connections_are_retried_and_token_is_sent():
    with callback_server(fail_first=1, drop=True) as hook:
        result = post_callback(hook.url, {"success": True}, backoff_seconds=0, bearer_token="tkn")
    assert result.delivered and result.attempts == 2
    assert hook.headers[0]["Authorization"] == "Bearer tkn"


def test_gives_up_after_attempts_and_does_not_retry_client_errors():
    with callback_server(fail_first=100) as hook:
        result = post_callback(hook.url, {"success": True}, attempts=3, backoff_seconds=0)
    assert not result.delivered and result.attempts == 3 and result.error == "HTTP 503"
    with callback_server(fail_first=100, fail_status=404) as hook:
        result = post_callback(hook.url, {"success": True}, attempts=3, backoff_seconds=0)
    assert not result.delivered and result.attempts == 1 and hook.attempts == 1


def test_urls_are_redacted_for_logs():
    assert redact("https://user:pw@hooks.example.com:8443/p/a?token=s3cret") == "https://hooks.example.com:8443/…"
    with pytest.raises(ValueError, match="http"):
        post_callback("file:///etc/passwd", {})
