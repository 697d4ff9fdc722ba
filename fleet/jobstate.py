"""What a job's state is, decided from what Redis says about it (pure)."""

from __future__ import annotations

from typing import Any

from fleet import codec, keys
from fleet.errors import JobFailed

QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"
FAILED = "failed"
DEAD = "dead"
UNKNOWN = "unknown"


def status_from(result: bytes | None, pending: list[Any], entry: list[Any], delivered: bool) -> str:
    """`result` from GET, `pending` from XPENDING id id, `entry` from XRANGE id id,
    `delivered`: whether the group's last-delivered ID is at or past the job."""
    if result is not None:
        try:
            outcome = codec.decode_outcome(result)
        except codec.DecodeError:
            return UNKNOWN
        return {codec.STATUS_OK: DONE, codec.STATUS_DEAD: DEAD}.get(outcome.status, FAILED)
    if pending:
        return RUNNING
    if entry:
        return RETRYING if delivered else QUEUED
    return UNKNOWN


def status_of_replies(job_id: str, replies: list[Any]) -> str:
    """The state from the replies of GET result, XPENDING id id, XRANGE id id and XINFO
    GROUPS (run with raise_on_error=False). A refused GET or XRANGE (an ACL without the
    right) is raised as a Fleet error; a missing stream or group just means not there."""
    from fleet.errors import translate_redis_error

    result, pending, entry, groups = replies
    for reply in (result, entry):
        if isinstance(reply, Exception):
            raise translate_redis_error(reply)
    pending = [] if isinstance(pending, Exception) else pending
    groups = [] if isinstance(groups, Exception) else groups
    last = next(
        (g["last-delivered-id"] for g in groups if g["name"] in (keys.GROUP, keys.GROUP.encode())),
        b"0-0",
    )
    last = last.decode() if isinstance(last, bytes) else str(last)
    return status_from(result, pending, entry, compare_ids(last, job_id) >= 0)


def queue_info_of(queue: str, raw: bytes | None) -> codec.QueueInfo:
    """A queue's published settings: UnknownQueue when none, a FleetError when unreadable."""
    from fleet.errors import FleetError, UnknownQueue

    if raw is None:
        raise UnknownQueue(queue)
    try:
        return codec.QueueInfo.decode(queue, raw)
    except codec.DecodeError as exc:
        raise FleetError(f"queue {queue!r} is declared with unreadable settings: {exc}") from None


def compare_ids(a: str, b: str) -> int:
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    ka, kb = (int(ams), int(aseq or 0)), (int(bms), int(bseq or 0))
    return (ka > kb) - (ka < kb)


def value_of(job_id: str, outcome: codec.Outcome) -> Any:
    """The job's value, or JobFailed carrying the remote error."""
    if outcome.status == codec.STATUS_OK:
        return outcome.value
    raise JobFailed(job_id, outcome.error or "failed without an error message", outcome.attempts)
