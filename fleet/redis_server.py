"""Start and stop a private redis-server: `fleet up` without a Redis URL, the
benchmarks, and the test suite all use this."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError

INSTALL_HINT = (
    "redis-server not found on PATH: install it (Debian/Ubuntu: `sudo apt-get install redis-server`; "
    "macOS: `brew install redis`) or set redis.url / FLEET_REDIS__URL to an existing Redis"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise FleetError(INSTALL_HINT)
    return path


@dataclass
class RedisServer:
    """A redis-server child process on 127.0.0.1, AOF on, data under `data_dir`."""

    data_dir: Path
    port: int = 0
    password: str | None = None
    tls: bool = False  # TLS only, on `port` (plaintext off); extra_args name the --tls-* files
    appendfsync: str = "everysec"
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            *(["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir = self.data_dir.resolve()  # redis-server chdirs to --dir first
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text()[-500:] if log.exists() else ""
                raise FleetError(f"redis-server exited with {self.proc.returncode}: {tail}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                if self.tls:  # it listens only once initialised; PING would need a handshake
                    return
                s.sendall(b"PING\r\n")
                if s.recv(64):
                    return
            time.sleep(0.02)
        raise FleetError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def new_password() -> str:
    return secrets.token_urlsafe(24)
