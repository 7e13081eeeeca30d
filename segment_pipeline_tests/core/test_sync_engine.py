"""Pure pieces of the sync engine: pacing, Retry-After, batching by rows and bytes, in-flight draining."""

from __future__ import annotations

import threading

import pytest

from segment_pipeline.core.esp.http import RateLimiter, retry_after_seconds
from segment_pipeline.core.esp.klaviyo import IMPORT_OVERHEAD_BYTES, import_body, profile_item
from segment_pipeline.core.sync.batching import InFlight, Row, chunk


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_rate_limiter_keeps_every_window():
    clock = Clock()
    lim = RateLimiter([(10, 1.0), (15, 60.0)], margin=0.0, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(16):
        lim.acquire()
        times.append(clock.t)
    assert times[:10] == [0.0] * 10 and times[10] == pytest.approx(1.0)  # burst, then the 1 s window
    assert times[15] == pytest.approx(60.0)  # the 16th waits for the 60 s window


def test_rate_limiter_counts_a_slot_from_the_answer_and_spaces_bursts():
    clock = Clock()
    lim = RateLimiter([(2, 1.0)], margin=0.0, clock=clock, sleep=clock.sleep)
    a = lim.acquire(settle_later=True)
    b = lim.acquire(settle_later=True)
    clock.t = 0.4
    lim.settle(a)  # answered at 0.4: the server counted it at some point before
    clock.t = 2.0
    lim.settle(b)  # b took 2 s to answer: until then it kept its slot
    lim.acquire()
    assert clock.t == pytest.approx(2.0)  # a's slot freed at 1.4
    lim.acquire()
    assert clock.t == pytest.approx(3.0)  # b's slot only frees a window after its answer
    spaced = RateLimiter([(10, 1.0), (100, 60.0)], margin=0.0, min_interval=0.05, clock=clock, sleep=clock.sleep)
    start = clock.t
    times = []
    for _ in range(10):
        spaced.acquire()
        times.append(clock.t - start)
    assert times == pytest.approx([0.05 * i for i in range(10)])


def test_rate_limiter_pause_until():
    clock = Clock()
    lim = RateLimiter([(100, 1.0)], clock=clock, sleep=clock.sleep)
    lim.pause_until(5.0)
    lim.acquire()
    assert clock.t == pytest.approx(5.0)


def test_retry_after_parsing():
    assert retry_after_seconds("3", 1.0) == 3.0
    assert retry_after_seconds(None, 1.5) == 1.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 2.0) == 0.0  # in the past
    assert retry_after_seconds("garbage", 2.0) == 2.0


def _rows(n: int) -> list[Row]:
    return [Row(f"user{i:03d}@example.com", '["A"]', False) for i in range(n)]


def test_chunk_respects_rows_and_bytes():
    batches = list(chunk(_rows(25), max_rows=10))
    assert [len(b) for b in batches] == [10, 10, 5]

    def enc(r: Row) -> bytes:
        return profile_item(r.email, "nosto_segment", ["A"])

    one = len(enc(_rows(1)[0])) + 1
    batches = list(chunk(_rows(25), max_rows=100, max_bytes=one * 7, encode=enc))
    assert [len(b) for b in batches] == [7, 7, 7, 4]
    for b in batches:  # each body really fits the byte budget (plus the envelope)
        assert len(import_body([r.encoded for r in b], "LIST01")) <= one * 7 + IMPORT_OVERHEAD_BYTES
    with pytest.raises(ValueError, match="request limit"):
        list(chunk(_rows(1), max_rows=10, max_bytes=10, encode=enc))


def test_in_flight_confirms_finished_batches_then_raises_first_error():
    confirmed: list[int] = []
    started: list[int] = []
    lock = threading.Lock()

    def work(b: int) -> int:
        with lock:
            started.append(b)
        if b == 3:
            raise RuntimeError("boom")
        return b * 10

    with pytest.raises(RuntimeError, match="boom"):
        InFlight(work, lambda b, r: confirmed.append(r), max_in_flight=2).run(range(100))
    assert 3 not in [c // 10 for c in confirmed] and {0, 10, 20} <= set(confirmed)
    assert len(started) < 100  # stopped submitting after the failure


def test_rate_limiter_short_windows_go_by_receipt_long_windows_by_answer():
    clock = Clock()
    lim = RateLimiter([(1, 1.0), (2, 60.0)], margin=0.0, clock=clock, sleep=clock.sleep)
    a = lim.acquire(settle_later=True)  # sent at 0, fully received by 0.1, answered at 0.9
    clock.t = 0.9
    lim.settle(a, at=0.1)
    b = lim.acquire(settle_later=True)  # the 1 s window frees a second after receipt, not after the answer
    assert clock.t == pytest.approx(1.1)
    clock.t = 1.2
    lim.settle(b)  # a small request: counted by the time it was answered
    lim.acquire()
    # the 60 s window counts the first request from its answer (0.9): the third waits till 60.9
    assert clock.t == pytest.approx(60.9)


def test_rate_limiter_gives_a_refused_slot_back():
    clock = Clock()
    lim = RateLimiter([(1, 1.0)], margin=0.0, clock=clock, sleep=clock.sleep)
    a = lim.acquire(settle_later=True)
    lim.release(a)  # 429: the server did not count it
    lim.acquire()
    assert clock.t == 0.0


def test_poll_timer_brackets_job_duration_and_follows_a_slower_server():
    from segment_pipeline.core.esp.polling import PollTimer

    timer = PollTimer(initial=2.0, maximum=10.0)
    duration, checks, misses = 0.7, 0, 0

    def one_job(duration: float) -> None:
        nonlocal checks, misses
        delay, probe = timer.first_delay()
        elapsed = delay
        while True:
            checks += 1
            done = elapsed >= duration
            timer.observe(done, elapsed, probe)
            probe = False
            if done:
                return
            misses += 1
            elapsed += timer.retry_delay(1)

    for _ in range(40):
        one_job(duration)
    assert duration <= timer.hi <= duration * 1.05  # learned within 5%
    assert misses <= 6  # bisection: a handful of probes, not a miss per job
    before = misses
    for _ in range(20):
        one_job(duration)
    assert misses - before <= 1  # once learned, jobs are found done at their first check (lo only slowly forgets)
    for _ in range(20):
        one_job(1.5)  # the server got slower
    assert 1.5 <= timer.hi <= 1.5 * 1.3
    before = misses
    for _ in range(10):
        one_job(1.5)
    assert misses - before <= 2


def test_poll_timer_probes_one_job_at_a_time():
    from segment_pipeline.core.esp.polling import PollTimer

    timer = PollTimer(initial=1.0, maximum=5.0)
    first = timer.first_delay()
    others = [timer.first_delay() for _ in range(5)]
    assert first == (0.5, True)  # the midpoint of [0, 1]
    assert others == [(1.0, False)] * 5  # while it is out, the rest go at the known-good delay
    timer.observe(False, 0.0, probe=True)  # the probe failed without an answer: released
    assert timer.first_delay()[1] is True
