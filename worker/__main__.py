"""`python -m worker`: a worker started by `fleet up` or the scaler.

Its spec (settings included, secrets too) arrives as JSON on stdin, never in
argv or the environment, so `ps` shows no password. The pinning environment
(CUDA_VISIBLE_DEVICES etc.) was set by the parent before this interpreter started;
CPU affinity is set here, before any model code is imported.
"""

from __future__ import annotations

import os
import sys

from fleet.logs import setup_logging
from fleet.workerspec import WorkerSpec
from worker.process import Worker


def main() -> int:
    spec = WorkerSpec.from_json(sys.stdin.read())
    setup_logging(spec.settings.log_level, spec.settings.log_json)
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    return Worker(spec).run()


if __name__ == "__main__":
    sys.exit(main())
