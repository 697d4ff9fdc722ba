"""The scaler's signal reader: pure parsing of the probe's replies, and one real-Redis
read that gets every queue, the registry and the overrides in one round trip."""

from __future__ import annotations

import pytest
import redis

from fleet import codec, keys
from scaler.model import ScaleOverride
from scaler.signals import (
    LAG_COUNT_CAP,
    RateTracker,
    RawQueue,
    SignalReader,
    WorkerRecord,
    acked_total,
    encode_override,
    lag_of,
    oldest_wait_s,
    parse_override,
    parse_probe,
    parse_worker,
    queue_snapshot,
    stream_id_ms,
    worker_view,
)

NOW_MS = 1_700_000_100_000


def group(lag, pending=0, last="0-0", entries_read=None):
    return [b"name", b"workers", b"consumers", 1, b"pending", pending, b"last-delivered-id", last.encode(),
            b"entries-read", entries_read, b"lag", lag]


def probe(xlen, grp, oldest=None, idle=None, counted=None, added=None, now_ms=NOW_MS):
    return [xlen, grp or None, oldest, idle, counted, added, now_ms // 1000, (now_ms % 1000) * 1000]


# -- parsing the probe ------------------------------------------------------------

def test_steady_queue_reads_lag_pending_and_oldest_wait_from_the_entry_id():
    raw = parse_probe("q", probe(10, group(4, 2, "1700000090000-0", 6), b"1700000095000-0", 1500))
    assert (raw.length, raw.lag, raw.pending, raw.entries_read) == (10, 4, 2, 6)
    assert lag_of(raw) == 4
    assert oldest_wait_s(raw) == pytest.approx(5.0)
    assert raw.oldest_pending_idle_ms == 1500
    assert acked_total(raw) == 4


def test_nil_lag_after_deletions_falls_back_to_the_counted_entries_never_zero():
    raw = parse_probe("q", probe(50, group(None, 0, "1700000090000-0", 10), b"1700000091000-0", None, 37))
    assert raw.lag is None
    assert lag_of(raw) == 37


def test_nil_lag_past_the_count_cap_uses_the_entries_added_bound():
    raw = RawQueue("q", length=80_000, has_group=True, lag=None, entries_read=1_000,
                   counted_lag=LAG_COUNT_CAP, entries_added=60_000)
    assert lag_of(raw) == 59_000
    capped_unknown = RawQueue("q", length=80_000, has_group=True, lag=None, counted_lag=LAG_COUNT_CAP)
    assert lag_of(capped_unknown) == LAG_COUNT_CAP


def test_a_queue_without_a_group_counts_its_whole_stream_as_lag():
    raw = parse_probe("q", probe(7, None))
    assert not raw.has_group
    assert lag_of(raw) == 7
    assert oldest_wait_s(raw) is None


def test_nothing_undelivered_means_no_wait_and_a_clock_behind_the_id_is_not_negative():
    assert oldest_wait_s(parse_probe("q", probe(3, group(0, 0, "1700000090000-0", 3)))) is None
    ahead = parse_probe("q", probe(3, group(1, 0, "0-0", 0), b"1700000200000-0"))
    assert oldest_wait_s(ahead) == 0.0


@pytest.mark.parametrize(("entry_id", "ms"), [("1700000000000-3", 1700000000000), (b"5-0", 5), ("x-1", None)])
def test_stream_id_ms(entry_id, ms):
    assert stream_id_ms(entry_id) == ms


# -- registry, overrides, snapshot ------------------------------------------------------

def test_worker_entries_parse_and_garbage_is_skipped():
    data = codec.pack({"queue": "q", "device": "cpu", "state": "busy", "pid": 9, "host": "h",
                       "started_ms": 1000, "beat_ms": 2000, "last_busy_ms": 1500, "load_s": 0.5,
                       "done": 3, "failed": 1})
    record = parse_worker("w1", data)
    assert record == WorkerRecord("w1", "q", "cpu", "busy", "h", 9, 1000, 2000, 1500, 0.5, 3, 1)
    view = worker_view(record)
    assert (view.started_s, view.last_busy_s, view.state) == (1.0, 1.5, "busy")
    assert parse_worker("w2", b"\xc1") is None
    assert parse_worker("w3", codec.pack({"queue": "q", "state": "weird"})) is None


def test_overrides_round_trip_and_nonsense_is_no_override():
    o = ScaleOverride(replicas=3, min=None, max=5)
    assert parse_override(encode_override(o)) == o
    assert parse_override(b"\xc1") == ScaleOverride()
    assert parse_override(codec.pack({"replicas": -2, "min": "x"})) == ScaleOverride()


def test_queue_snapshot_carries_the_signals():
    raw = parse_probe("q", probe(10, group(None, 2, "1700000090000-0", 8), b"1700000098000-0", 250, 6))
    snap = queue_snapshot(raw, (), ScaleOverride(replicas=2), 12.5)
    assert (snap.lag, snap.pending, snap.length) == (6, 2, 10)
    assert snap.oldest_wait_s == pytest.approx(2.0)
    assert snap.oldest_pending_idle_s == pytest.approx(0.25)
    assert snap.completion_rate_per_s == 12.5
    assert snap.override.replicas == 2


def test_rate_is_smoothed_and_a_counter_reset_is_not_a_negative_rate():
    rates = RateTracker(tau_s=1.0)
    assert rates.observe("q", 0, 0.0) == 0.0
    assert not rates.known("q")
    r1 = rates.observe("q", 100, 1.0)  # 100/s instant, smoothed towards it
    assert 0 < r1 < 100
    r2 = rates.observe("q", 200, 2.0)
    assert r1 < r2 < 100
    assert rates.observe("q", 5, 3.0) == r2  # group re-created: baseline reset
    assert rates.observe("q", 5, 4.0) < r2  # nothing acked: decays


# -- one real round trip ---------------------------------------------------------------

def _submit(conn: redis.Redis, queue: str, n: int) -> list[bytes]:
    return [conn.xadd(keys.jobs(queue), {"p": codec.pack(i)}) for i in range(n)]


def test_reader_gets_every_queue_registry_and_overrides_in_one_round_trip(rconn):
    conn = rconn
    for q in ("a", "b"):
        conn.xgroup_create(keys.jobs(q), keys.GROUP, id="0", mkstream=True)
    _submit(conn, "a", 5)
    conn.xreadgroup(keys.GROUP, "c1", {keys.jobs("a"): ">"}, count=2)
    ids = _submit(conn, "b", 4)
    conn.xdel(keys.jobs("b"), ids[1])  # Redis now reports the lag as nil
    conn.hset(keys.WORKERS, "w1", codec.pack({"queue": "a", "device": "cpu", "state": "idle", "beat_ms": 1}))
    conn.hset(keys.SCALE, "a", encode_override(ScaleOverride(replicas=3)))
    reader = SignalReader(conn)
    reader.read(["a"])  # loads the script
    before = reader.round_trips
    reading = reader.read(["a", "b", "missing"])
    assert reader.round_trips - before == 1
    a, b, missing = reading.queues["a"], reading.queues["b"], reading.queues["missing"]
    assert (lag_of(a), a.pending, a.entries_read) == (3, 2, 2)
    assert a.oldest_undelivered_id is not None and oldest_wait_s(a) is not None
    assert b.lag is None and lag_of(b) == 3
    assert (missing.has_group, lag_of(missing)) == (False, 0)
    assert reading.workers["w1"].queue == "a"
    assert reading.overrides["a"].replicas == 3
    conn.script_flush()  # a restarted Redis: the reader reloads its probe
    assert lag_of(reader.read(["a"]).queues["a"]) == 3
