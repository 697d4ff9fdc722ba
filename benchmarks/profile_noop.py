"""Profile the client and one no-op worker under `map` (or one-submit-per-job) load, with py-spy.

    .venv/bin/python benchmarks/profile_noop.py [--seconds 10] [--jobs 20000] [--no-spy] [--mode submit]

Brings up the benchmark's fleet (no embed queue), runs `map` of `--jobs` echo
jobs on the 1-worker queue over and over for `--seconds`, and prints each map's
rate. With py-spy (the `dev` extra), it samples this process (the client) and the
worker at the same time and prints the top frames of each: by own time (the leaf
of each sample) and by inclusive time. `--out DIR` keeps the raw collapsed stacks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from fleet.benchkit import harness, noop
from fleet.client import Client
from fleet.connection import connect
from fleet.logs import setup_logging


def settings_port(settings: object) -> int:
    url = settings.redis.url  # type: ignore[attr-defined]
    return int(url.rsplit(":", 1)[1].split("/")[0])


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "py-spy"
    argv = [
        str(exe),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def frame_name(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)'."""
    func, _, where = frame.partition(" (")
    return f"{func} ({Path(where.split(':')[0]).name})"


def top_frames(path: Path, n: int = 15) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            inclusive[name] += int(count)
    return total, own.most_common(n), inclusive.most_common(n)


def show(title: str, path: Path) -> None:
    if not path.exists():
        print(f"\n{title}: no profile (py-spy missing or not allowed to attach)")
        return
    total, own, inclusive = top_frames(path)
    print(f"\n{title}: {total} samples")
    print("  own time:")
    for name, count in own:
        print(f"    {count / total:6.1%}  {name}")
    print("  inclusive:")
    for name, count in inclusive:
        print(f"    {count / total:6.1%}  {name}")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pid(port: int) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.strip() else None


def load(client: Client, mode: str, jobs: int) -> float:
    if mode == "map":
        return noop.map_rate(client, harness.NOOP1, jobs).per_s
    return noop.threaded_submit_rate(client, harness.NOOP1, jobs // 10, 16).per_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--no-spy", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--mode",
        choices=["map", "submit"],
        default="map",
        help="map: map of --jobs; submit: 16 threads, one submit + result per job",
    )
    args = parser.parse_args()
    setup_logging("WARNING")
    out = args.out or Path(tempfile.mkdtemp(prefix="fleet-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    with harness.bench_fleet(harness.QUICK, with_embed=False) as settings, Client(settings.redis) as client:
        worker = harness.worker_pids(connect(settings.redis))[harness.NOOP1][0]
        client.map(harness.NOOP1, list(range(1000)))
        spies = (
            []
            if args.no_spy
            else [
                spy(worker, args.seconds, out / "worker.txt"),
                spy(os.getpid(), args.seconds, out / "client.txt"),
            ]
        )
        rates = []
        pids = {"client": os.getpid(), "worker": worker, "redis": redis_pid(settings_port(settings))}
        before = {name: cpu_s(pid) for name, pid in pids.items() if pid}
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            rates.append(load(client, args.mode, args.jobs))
        used = {name: cpu_s(pids[name]) - was for name, was in before.items()}
        for proc in spies:
            proc.wait(60)
    print("map rates (jobs/s):", ", ".join(f"{r:,.0f}" for r in rates))
    print(f"median {statistics.median(rates):,.0f} jobs/s over {len(rates)} rounds ({args.mode})")
    jobs = len(rates) * (args.jobs if args.mode == "map" else args.jobs // 10 // 16 * 16)
    print("CPU per job (us): " + ", ".join(f"{n} {1e6 * t / jobs:.1f}" for n, t in used.items()))
    if not args.no_spy:
        show("client (this process)", out / "client.txt")
        show(f"worker (pid {worker})", out / "worker.txt")


if __name__ == "__main__":
    main()
