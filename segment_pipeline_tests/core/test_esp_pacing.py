"""Client-side pacing against the fake's server-side limits (real HTTP on loopback).

The fake counts a request when its headers arrive, as an API gateway does, and answers a large
import only after processing it. The client stamps a large request's slot by when it was sent, so
slow answers do not slow the send rate, and a small request's by its answer; it never draws a 429.
"""

from __future__ import annotations

import pytest

from segment_pipeline.core.esp.http import LARGE_BODY_BYTES, EspGiveUp, RetryPolicy
from segment_pipeline.core.esp.klaviyo import import_body, profile_item
from segment_pipeline_tests.fakes.helpers import klaviyo_client
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

JOBS = "bulk_import_profiles"


def _body(n: int) -> bytes:
    return import_body([profile_item(f"user{i}@example.com", "nosto_segment", ["Loyal Customers"]) for i in range(n)],
                       None)


@pytest.mark.parametrize(("profiles", "answer_based"), [(800, False), (1, True)])
def test_send_rate_is_not_held_back_by_slow_answers_of_large_requests(profiles, answer_based):
    """Both properties are read from recorded times, never from how long the test took: the
    server's arrival times give the lower bounds (never faster than the limit), and the client's
    own pacing wait shows where it counted the first request's slot from. A slower machine only
    makes that wait shorter (more of the window has already passed), never longer."""
    body = _body(profiles)
    assert (len(body) >= LARGE_BODY_BYTES) != answer_based
    delay = 0.6
    with FakeKlaviyo(limits={JOBS: [(1, 1.0)]}) as fake:
        client = klaviyo_client(fake.url, limits={JOBS: [(1, 1.0)]})
        limiter = client.http.limiter(JOBS)
        try:
            fake.inject("delay", times=1, match="POST /api/profile-bulk-import-jobs", delay=delay)
            client.submit_import(body)  # counted on arrival, answered 0.6 s later
            client.submit_import(body)
        finally:
            client.close()
        accepted = [r for r in fake.log if r.family == JOBS]
        assert [r.status for r in accepted] == [202, 202]  # no 429: the client waited long enough
        gap = accepted[1].received_at - accepted[0].received_at
        assert gap >= 1.0  # never faster than the limit, as the server counted
        window = limiter.limits[0][1]  # 1 s plus the limiter's margin
        if answer_based:
            # a small request's slot runs from its answer, at least 0.6 s after its arrival
            assert gap >= 1.0 + delay
        else:
            # a large one's from when it was sent (plus the receipt allowance): the answer came
            # `delay` later, so by then the client owed at most the rest of the window
            allowance = client.http.allowance.get(JOBS, client.http.receipt_allowance)
            assert limiter.waited_seconds <= window - delay + allowance


def test_fake_refuses_over_the_limit_before_reading_the_body():
    with FakeKlaviyo(limits={JOBS: [(1, 60.0)]}) as fake:
        # no client-side limit of 1/min: the fake must push back; Retry-After (~60 s) exceeds 0.5 s
        client = klaviyo_client(fake.url, policy=RetryPolicy(max_elapsed=0.5, base_delay=0.01, max_delay=0.05))
        try:
            client.submit_import(_body(1))
            with pytest.raises(EspGiveUp, match="HTTP 429"):
                client.submit_import(b"{not json")  # refused on its headers: the body is never parsed
        finally:
            client.close()
        statuses = [r.status for r in fake.log if r.family == JOBS]
        assert statuses == [202, 429]  # not 400: the invalid body was never looked at
        assert len(fake.spec_violations) == 0
