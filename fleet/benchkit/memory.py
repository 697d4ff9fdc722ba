"""Resident memory: of running workers (by PID), and the model's own footprint =
RSS of a fresh interpreter after loading MiniLM minus that of a bare interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleet.errors import FleetError

_PRINT_RSS = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')))"
_LOAD_MODEL = "from worker.handlers.embed import MiniLM; MiniLM('cpu')\n"


def rss_bytes(pid: int) -> int:
    """VmRSS of a live process, from /proc/<pid>/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise FleetError(f"cannot read the memory of process {pid}: {exc.strerror}") from exc
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise FleetError(f"process {pid} reports no VmRSS")


def fresh_rss_bytes(code: str = "") -> int:
    """RSS of a fresh interpreter after running `code` (CPU only, no GPU context)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(
        [sys.executable, "-c", code + _PRINT_RSS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise FleetError(f"measuring a fresh interpreter failed: {out.stderr.strip()[-300:]}")
    return int(out.stdout.split()[-1]) * 1024


def model_footprint_bytes() -> tuple[int, int]:
    """(bare interpreter RSS, interpreter + loaded MiniLM RSS)."""
    return fresh_rss_bytes(), fresh_rss_bytes(_LOAD_MODEL)
