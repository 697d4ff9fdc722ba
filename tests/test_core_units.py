"""Pure pieces of the core, driven without Redis."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import pytest
from scipy.stats import rankdata, spearmanr

from fleet import codec, keys
from fleet.errors import ConfigError, InvalidPayload, PayloadTooLarge
from fleet.inbox import CountdownWaiter, Inbox
from fleet.jobstate import DONE, QUEUED, RETRYING, RUNNING, UNKNOWN, compare_ids, status_from
from fleet.settings import load_settings
from fleet.stats import percentile, ranks, spearman
from fleet.submit import build_call, encode_payloads
from worker.execute import decode_entries, run_batch
from worker.handlers.base import Handler, JobError


def test_every_key_of_a_queue_shares_its_hash_tag():
    for key in (keys.jobs("q"), keys.result("q", "1-0"), keys.dlq("q"), keys.delayed("q"),
                keys.idempotency("q", "k")):
        assert "{q}" in key
    assert keys.queue_of_jobs_key(keys.jobs("emb.ed-1")) == "emb.ed-1"
    assert keys.is_reply_key(keys.reply("c-abc"))
    assert not keys.is_reply_key("fleet:{q}:jobs")


@pytest.mark.parametrize("name,ok", [("embed", True), ("a.b-c_d", True), ("", False), ("x{y}", False),
                                     ("a:b", False), ("-lead", False), ("x" * 65, False)])
def test_queue_names(name, ok):
    assert keys.valid_queue_name(name) is ok


def test_payload_limit_is_checked_before_anything_is_written():
    assert encode_payloads("q", ["ab"], 100) == [msgpack.packb("ab")]
    with pytest.raises(PayloadTooLarge) as err:
        encode_payloads("q", ["ok", "x" * 200], 100)
    assert err.value.size_bytes > 100 and err.value.limit_bytes == 100
    with pytest.raises(InvalidPayload):
        encode_payloads("q", [object()], 100)


def test_submit_call_arguments():
    call = build_call("q", [b"a", b"b"], max_backlog=10, now_ms=5, reply_key="r", idempotency_key="k1")
    assert call.keys == [keys.jobs("q"), keys.idempotency("q", "k1")]
    assert call.args == [10, 5, "r", 3600, "", b"a", b"b"]
    with pytest.raises(InvalidPayload):
        build_call("q", [b"a"], max_backlog=1, now_ms=1, reply_key=None, idempotency_key="bad key")


def test_decode_job_round_trip_and_hostile_entries():
    fields = {b"p": codec.pack({"x": 1}), b"t": b"123", b"reply": keys.reply("c-1").encode()}
    job = codec.decode_job(b"5-1", fields, 1000)
    assert (job.id, job.payload, job.enqueued_ms, job.reply) == ("5-1", {"x": 1}, 123, keys.reply("c-1"))
    for bad, why in [({b"t": b"1"}, "no payload"), ({b"p": b"\xc1"}, "not valid msgpack"),
                     ({b"p": codec.pack(1), b"zzz": b"1"}, "does not write"),
                     ({b"p": codec.pack(1), b"t": b"x"}, "not an integer"),
                     ({b"p": codec.pack(1), b"reply": b"fleet:{q}:jobs"}, "reply"),
                     ({b"p": codec.pack("x" * 50)}, "over the")]:
        with pytest.raises(codec.DecodeError, match=why):
            codec.decode_job(b"1-1", bad, 20)


def test_outcome_round_trip():
    out = codec.Outcome(codec.STATUS_FAILED, error="boom", attempts=3, worker="w", history=("a", "b"))
    assert codec.decode_outcome(out.encode()) == out


def test_ranks_and_spearman_match_scipy():
    rng = random.Random(7)
    x = [rng.choice([0.0, 0.5, 1.0, 1.5, 2.0]) for _ in range(300)]
    y = [v + rng.random() for v in x]
    assert ranks(x) == list(rankdata(x))
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 100) == 4


def test_inbox_delivers_early_and_late_outcomes_once():
    inbox = Inbox(max_unclaimed=2)
    ok = codec.Outcome(codec.STATUS_OK, value=1)
    inbox.deliver([("a", ok)])  # before anyone waits
    waiter = CountdownWaiter(2)
    inbox.register(["a", "b"], waiter)
    assert not waiter.done.is_set()
    inbox.deliver([("b", ok), ("b", codec.Outcome(codec.STATUS_OK, value=2))])
    assert waiter.done.is_set() and waiter.results["b"].value == 1
    inbox.deliver([("x", ok), ("y", ok), ("z", ok)])
    assert inbox.evicted == 2  # the late duplicate of "b", then "x": bounded, oldest first


@pytest.mark.parametrize("result,pending,entry,delivered,want", [
    (codec.Outcome(codec.STATUS_OK).encode(), [], [], True, DONE),
    (None, [{"message_id": b"1-0"}], [(b"1-0", {})], True, RUNNING),
    (None, [], [(b"1-0", {})], False, QUEUED),
    (None, [], [(b"1-0", {})], True, RETRYING),
    (None, [], [], False, UNKNOWN),
])
def test_job_status(result, pending, entry, delivered, want):
    assert status_from(result, pending, entry, delivered) == want


def test_compare_ids_is_numeric():
    assert compare_ids("10-0", "9-5") == 1 and compare_ids("9-5", "9-5") == 0
    assert compare_ids("9-5", "9-10") == -1


class Picky(Handler):
    """Fails the whole batch when it holds a 'bad' item, and flags 'soft' items itself."""

    def validate(self, payload):
        if payload == "invalid":
            raise ValueError("no thanks")
        return payload

    def run(self, batch):
        if "bad" in batch:
            raise RuntimeError("batch poisoned")
        return [JobError("soft fail") if x == "soft" else x.upper() for x in batch]


def test_a_bad_job_fails_alone():
    entries = [(f"{i}-0".encode(), {b"p": codec.pack(v)}) for i, v in
               enumerate(["a", "bad", "invalid", "soft", "b"])]
    entries.append((b"9-0", {b"p": b"\xc1"}))
    batch = decode_entries(entries, 1000, "w1")
    run_batch(Picky(), batch, "w1")
    got = [(w.outcome.status, w.outcome.value, w.outcome.error) for w in batch]
    assert got[0] == ("ok", "A", None) and got[4] == ("ok", "B", None)
    assert got[1][0] == "failed" and "batch poisoned" in got[1][2]
    assert got[2][0] == "failed" and "no thanks" in got[2][2]
    assert got[3] == ("failed", None, "soft fail")
    assert got[5][0] == "failed" and "malformed job" in got[5][2]


def test_settings_file_env_and_errors(tmp_path: Path, monkeypatch):
    path = tmp_path / "f.yaml"
    path.write_text("queues:\n  embed:\n    handler: embed\n    max_batch: 32\n")
    monkeypatch.setenv("FLEET_QUEUES__EMBED__MAX_DELAY_MS", "7")
    s = load_settings(path)
    assert (s.queues["embed"].max_batch, s.queues["embed"].max_delay_ms) == (32, 7)
    path.write_text("queues:\n  embed:\n    handler: embed\n    max_bach: 3\n")
    with pytest.raises(ConfigError, match=r"queues\.embed\.max_bach = 3"):
        load_settings(path)
    path.write_text("queues:\n  embed:\n    handler: embed\n    max_batch: 0\n")
    with pytest.raises(ConfigError, match=r"queues\.embed\.max_batch = 0: Input should be greater"):
        load_settings(path)
    path.write_text("queues: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path)
