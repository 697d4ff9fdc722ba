"""What a job's state is, decided from what Redis says about it (pure)."""

from __future__ import annotations

from typing import Any

from fleet import codec
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
