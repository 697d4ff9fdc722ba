"""A job that hangs its worker past the job timeout: the scaler kills the worker
through its slice, the delivery counts, and the job ends dead while the rest finish."""

from __future__ import annotations

import threading

import pytest

from fleet.cli.up import scaler_loop
from fleet.client import Client
from fleet.errors import JobFailed
from fleet.settings import FleetSettings

pytestmark = pytest.mark.timeout(120)


def test_hung_worker_is_killed_and_its_job_dead_letters(redis_server, tmp_path):
    settings = FleetSettings(
        redis={"url": redis_server.url},  # type: ignore[arg-type]
        queues={"q": {  # type: ignore[dict-item]
            "handler": "sleep", "max_batch": 1, "workers": 1, "device": "cpu", "job_timeout_s": 1.0,
            "visibility_timeout_ms": 300, "max_deliveries": 2, "block_ms": 200,
            "handler_options": {"ms_per_batch": 1, "allow_hang": True},
        }},
        worker={"heartbeat_interval_s": 0.1},  # type: ignore[arg-type]
        scaler={"tick_s": 0.2, "autoscale": False},  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
    )
    with scaler_loop(settings) as fleet, Client(settings.redis) as client:
        loop = threading.Thread(target=fleet.loop.run, daemon=True)
        loop.start()
        try:
            hung = client.submit("q", {"hang_s": 600})
            others = client.submit_many("q", list(range(5)))
            with pytest.raises(JobFailed, match="delivered 3 times") as err:
                hung.result(timeout_s=60)
            assert err.value.attempts == 3
            assert [j.result(timeout_s=30) for j in others] == list(range(5))
            assert len(fleet.loop.exited) >= 2  # two workers killed, each holding the hung job
        finally:
            fleet.loop.stop.set()
            loop.join()
