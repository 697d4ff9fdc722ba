"""`fleet bench --quick --json` runs end to end and reports every figure.

No timing assertions: this machine's speed is not the test's business; only that
each figure was measured (present and positive) and each target was judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.benchkit.noop import aio_available

ROOT = Path(__file__).resolve().parent.parent
STSB = ROOT.parent / "shared" / "data" / "stsb" / "stsb-en-dev.csv"

FIGURES = {
    "ceiling": ["xadd_pipelined_per_s", "xreadgroup_xack_per_s"],
    "noop": [
        "map_1_worker_per_s",
        "map_2_workers_per_s",
        "map_1_worker_mean_batch",
        "map_2_workers_mean_batch",
        "submit_threads_per_s",
    ],
    "latency": ["p50_ms", "p99_ms", "max_ms", "jobs"],
    "embed": ["fleet_sentences_per_s", "direct_sentences_per_s", "mean_batch", "batch_fill"],
    "memory": [
        "noop_worker_idle_rss_mb",
        "embed_worker_rss_mb",
        "model_footprint_mb",
        "bare_interpreter_rss_mb",
    ],
}


@pytest.mark.timeout(300)
@pytest.mark.skipif(not STSB.exists(), reason="STS-B dev split not present")
def test_bench_quick_json_reports_every_figure(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("FLEET_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-c", "from fleet.cli import main; main()", "bench", "--quick", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    for section, names in FIGURES.items():
        for name in names:
            value = report[section][name]
            assert isinstance(value, int | float) and value > 0, f"{section}.{name} = {value!r}"
    if aio_available():
        assert report["noop"]["submit_async_per_s"] > 0
    assert report["targets"] and all(
        isinstance(t["met"], bool) for t in report["targets"] if t["value"] is not None
    )
