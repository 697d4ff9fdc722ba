"""Hostile input: whatever bytes sit in a stream entry or a reply, and whatever a
config file says, Fleet answers with its own error, never another exception."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fleet import codec, keys
from fleet.errors import ConfigError
from fleet.settings import FleetSettings, load_settings
from worker.execute import decode_entries

FIELD_NAMES = sorted(keys.JOB_FIELDS)
entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# raw bytes, and msgpack of arbitrary plain data (reaches the checks past the decoder)
values = st.binary(max_size=64) | plain.map(lambda v: msgpack.packb(v, use_bin_type=True)) | st.sampled_from(
    [b"", b"-1", b"9" * 5000, b"\xc1", b"\x91" * 5000, b"fleet:reply:{c-1}", b"1-1", b"\xc7\x05\xff1234"]
)
names = st.sampled_from(FIELD_NAMES).map(str.encode) | st.binary(max_size=8)
fields = st.dictionaries(names, values, max_size=10)


@given(entry_id=entry_ids, fields=fields, as_bytes=st.booleans())
@settings(max_examples=400, deadline=None)
def test_decode_job_raises_only_decode_error(entry_id, fields, as_bytes):
    raw_id = entry_id.encode() if as_bytes else entry_id
    try:
        job = codec.decode_job(raw_id, fields, 1 << 16)
    except codec.DecodeError as exc:
        assert str(exc)
        return
    assert job.entry_id == entry_id
    assert job.reply is None or keys.is_reply_key(job.reply)


@given(batch=st.lists(st.tuples(entry_ids.map(str.encode), fields), max_size=8))
@settings(max_examples=200, deadline=None)
def test_decode_entries_gives_every_entry_a_work_item(batch):
    works = decode_entries(batch, 1 << 16, "w-1")
    assert [w.entry_id for w in works] == [eid.decode() for eid, _ in batch]
    for work in works:
        if work.job is None:  # failed alone, with a readable reason
            assert work.outcome is not None and work.outcome.status == codec.STATUS_FAILED
            assert work.outcome.error and work.outcome.error.startswith("malformed job: ")
        else:
            assert work.outcome is None


outcome_maps = st.dictionaries(st.sampled_from(["s", "v", "e", "a", "w", "h"]) | st.text(max_size=3), plain)


@given(data=st.binary(max_size=64) | outcome_maps.map(lambda m: msgpack.packb(m, use_bin_type=True)))
@settings(max_examples=300, deadline=None)
def test_decode_outcome_and_queue_info_raise_only_decode_error(data):
    for decode in (codec.decode_outcome, lambda d: codec.QueueInfo.decode("q", d)):
        with contextlib.suppress(codec.DecodeError):
            decode(data)


# -- settings ---------------------------------------------------------------------------------

QUEUE_FIELDS = ["handler", "max_batch", "max_delay_ms", "workers", "max_payload_bytes", "block_ms"]
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
yamlish = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "redis": st.dictionaries(st.sampled_from(["url", "password", "username", "bogus"]), yamlish),
        "queues": st.dictionaries(
            st.text(max_size=10),
            st.dictionaries(st.sampled_from([*QUEUE_FIELDS, "bogus"]), yamlish, max_size=4) | yamlish,
            max_size=3,
        ),
        "worker": yamlish,
        "log_level": yamlish,
        "state_dir": yamlish,
    },
)


def _load(data: Any) -> FleetSettings:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fleet.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_settings(path)


@given(data=configs | yamlish)
@settings(max_examples=300, deadline=None)
def test_any_config_file_loads_or_raises_config_error(data):
    try:
        _load(data)
    except ConfigError as exc:
        assert str(exc).startswith(("invalid configuration", "config file"))


@given(data=configs)
@settings(max_examples=300, deadline=None)
def test_model_validate_raises_only_validation_error(data):
    try:
        FleetSettings.model_validate(data)
    except ValidationError as exc:
        assert exc.errors()


GOOD = {"redis": {"url": "redis://127.0.0.1:1"}, "queues": {"q": {"handler": "echo"}}}
BAD_VALUES = st.sampled_from(
    [
        ("queues.q.max_batch", ("queues", "q", "max_batch"), 0),
        ("queues.q.max_batch", ("queues", "q", "max_batch"), "many"),
        ("queues.q.block_ms", ("queues", "q", "block_ms"), -5),
        ("queues.q.bogus", ("queues", "q", "bogus"), 1),
        ("redis.url", ("redis", "url"), "http://x"),
        ("redis.passwd", ("redis", "passwd"), "x"),
        ("worker.heartbeat_interval_s", ("worker", "heartbeat_interval_s"), 0),
        ("log_level", ("log_level",), "LOUD"),
        ("surprise", ("surprise",), {"a": 1}),
    ]
)


@given(case=BAD_VALUES, name=st.from_regex(keys.QUEUE_NAME_RE, fullmatch=True))
@settings(max_examples=100, deadline=None)
def test_the_error_names_the_bad_key(case, name):
    shown, path, value = case
    data: dict[str, Any] = {"redis": dict(GOOD["redis"]), "queues": {name: {"handler": "echo"}}}
    path = tuple(name if p == "q" else p for p in path)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        _load(data)
    assert shown.replace(".q.", f".{name}.") in str(err.value)
    with pytest.raises(ValidationError) as verr:
        FleetSettings.model_validate(data)
    assert any(tuple(map(str, e["loc"]))[: len(path)] == path for e in verr.value.errors())
