"""Passwords, ACL users and TLS against real redis-servers, with real worker processes."""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from fleet import codec, keys
from fleet.acl import render_acl
from fleet.client import Client
from fleet.connection import connect, redact_url
from fleet.errors import ConnectionFailed
from fleet.redis_server import RedisServer, new_password
from fleet.settings import FleetSettings, RedisSettings
from tests.conftest import wait_for

QUEUE = "echo"
FAIL_FAST_S = 5.0  # generous bound: these fail in well under a second


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
             "-days", "1", "-subj", f"/CN={name}")
    return key, crt


def _signed(d: Path, name: str, ca: tuple[Path, Path], san: str | None) -> tuple[Path, Path]:
    key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    extra: list[str | Path] = []
    if san is not None:
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", ext]
    _openssl("x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
             "-out", crt, "-days", "1", *extra)
    return key, crt


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA with a server and a client certificate, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "fleet-test-ca")
    server = _signed(d, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = _signed(d, "client", ca, None)
    _other_key, other = _ca(d, "unrelated-ca")
    return {"ca": ca[1], "server_key": server[0], "server_crt": server[1],
            "client_key": client[0], "client_crt": client[1], "other_ca": other}


def _tls_args(pki: dict[str, Path], auth_clients: str = "optional") -> list[str]:
    return ["--tls-cert-file", str(pki["server_crt"]), "--tls-key-file", str(pki["server_key"]),
            "--tls-ca-cert-file", str(pki["ca"]), "--tls-auth-clients", auth_clients]


def _settings(redis_cfg: dict[str, Any], **extra: Any) -> FleetSettings:
    return FleetSettings(
        redis=redis_cfg,  # type: ignore[arg-type]
        queues={QUEUE: {"handler": "echo", "max_batch": 20}},  # type: ignore[dict-item]
        worker={"heartbeat_interval_s": 0.2},  # type: ignore[arg-type]
        **extra,
    )


def _round_trip(cfg: RedisSettings, admin: redis.Redis, prefix: str = "c") -> None:
    """Wait for a worker, then submit → result, one job and a batch, with an idempotency key."""
    wait_for(lambda: admin.hlen(keys.WORKERS) >= 1, what="worker registered")
    with Client(cfg, client_id_prefix=prefix) as client:
        assert client.submit(QUEUE, {"x": 1}, idempotency_key="k-1").result(timeout_s=15) == {"x": 1}
        assert client.map(QUEUE, list(range(30)), timeout_s=15) == list(range(30))


def _fails_fast(cfg: RedisSettings) -> ConnectionFailed:
    started = time.monotonic()
    with Client(cfg) as client, pytest.raises(ConnectionFailed) as err:
        client.submit(QUEUE, 1)
    assert time.monotonic() - started < FAIL_FAST_S
    return err.value


def _connections(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


# -- (a) requirepass -----------------------------------------------------------------------


def test_requirepass_round_trip_with_secretstr_and_password_file(servers, workers, tmp_path):
    password = new_password()
    server = servers(password=password)
    admin = connect(RedisSettings(url=server.url, password=SecretStr(password)))
    workers.start(_settings({"url": server.url, "password": password}), QUEUE)
    _round_trip(RedisSettings(url=server.url, password=SecretStr(password)), admin)
    secret_file = tmp_path / "redis.password"
    secret_file.write_text(password + "\n")
    _round_trip(RedisSettings(url=server.url, password_file=secret_file), admin)
    admin.close()


def test_wrong_or_missing_password_fails_fast_without_retrying(servers):
    password = new_password()
    server = servers(password=password)
    admin = connect(RedisSettings(url=server.url, password=SecretStr(password)))
    before = _connections(admin)
    err = _fails_fast(RedisSettings(url=server.url, password=SecretStr("wrong-" + password)))
    assert "credentials" in str(err)
    assert password not in str(err) and "wrong-" not in str(err)
    # one connection: AUTH is refused once, not retried by redis-py's Retry
    assert _connections(admin) - before == 1
    _fails_fast(RedisSettings(url=server.url))
    admin.close()


# -- (b) ACL users -------------------------------------------------------------------------


def _acl_fleet(
    servers: Callable[..., RedisServer], pki: dict[str, Path] | None = None
) -> tuple[RedisServer, dict[str, str], redis.Redis]:
    """A server (TLS when `pki`) whose default user is the admin, with Fleet's three users."""
    admin_pw = new_password()
    tls = pki is not None
    server = servers(password=admin_pw, tls=tls, extra_args=_tls_args(pki) if pki else [])
    ca = pki["ca"] if pki else None
    admin = connect(RedisSettings(url=server.url, password=SecretStr(admin_pw), tls_ca_file=ca))
    passwords = {role: new_password() for role in ("submitter", "worker", "operator")}
    settings = _settings({"url": server.url})
    for line in render_acl(settings, passwords=passwords, client_prefix="svcA").splitlines():
        assert admin.execute_command(*shlex.split(line)) in (b"OK", "OK", True)
    return server, passwords, admin


def _user(server: RedisServer, role: str, passwords: dict[str, str], **tls: Any) -> dict[str, Any]:
    return {"url": server.url, "username": f"fleet-{role}", "password": passwords[role], **tls}


def test_acl_users_run_the_whole_path_and_nothing_more(servers, workers):
    server, passwords, admin = _acl_fleet(servers)
    workers.start(_settings(_user(server, "worker", passwords)), QUEUE)
    submitter = RedisSettings(**_user(server, "submitter", passwords))
    _round_trip(submitter, admin, prefix="svcA")

    sub = connect(submitter)
    for refused in (
        lambda: sub.xread({keys.reply("svcB-0123"): "0-0"}),  # another client's replies
        lambda: sub.xread({keys.reply("c-0123"): "0-0"}),
        lambda: sub.delete(keys.jobs(QUEUE)),
        lambda: sub.xtrim(keys.jobs(QUEUE), maxlen=0),
        lambda: sub.xdel(keys.jobs(QUEUE), "0-1"),
        lambda: sub.set(keys.jobs(QUEUE), "x"),
        lambda: sub.xrange(keys.jobs(QUEUE)),  # other services' payloads
        lambda: sub.hset(keys.QUEUES, QUEUE, "x"),
        lambda: sub.xadd(keys.jobs("other"), {"p": "x"}),  # a queue not in the config
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()
    assert sub.xread({keys.reply("svcA-0123"): "0-0"}) == []  # its own: allowed

    worker = connect(RedisSettings(**_user(server, "worker", passwords)))
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.hset(keys.SCALE, QUEUE, "3")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.delete(keys.jobs(QUEUE))
    operator = connect(RedisSettings(**_user(server, "operator", passwords)))
    assert operator.hset(keys.SCALE, QUEUE, "3") == 1
    assert operator.xinfo_groups(keys.jobs(QUEUE))[0]["pending"] == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.delete(keys.jobs(QUEUE))
    for conn in (sub, worker, operator, admin):
        conn.close()


def test_acl_refusal_surfaces_as_a_fleet_error(servers):
    server, passwords, admin = _acl_fleet(servers)
    # declared, but not one of the queues the submitter's ACL was rendered for
    admin.hset(keys.QUEUES, "other", codec.QueueInfo("other", "echo", 1024, 10, 60).encode())
    submitter = RedisSettings(**_user(server, "submitter", passwords))
    with Client(submitter, reply=False) as client, pytest.raises(ConnectionFailed, match="ACL"):
        client.submit("other", 1)
    assert admin.exists(keys.jobs("other")) == 0
    admin.close()


# -- (c) TLS ---------------------------------------------------------------------------------


def test_tls_round_trip_with_ca_verification_and_client_certificate(servers, workers, pki):
    server = servers(tls=True, extra_args=_tls_args(pki))
    assert server.url.startswith("rediss://")
    tls = {"url": server.url, "tls_ca_file": pki["ca"]}
    admin = connect(RedisSettings(**tls))
    workers.start(_settings(tls), QUEUE)
    _round_trip(RedisSettings(**tls), admin)
    mutual = RedisSettings(**tls, tls_cert_file=pki["client_crt"], tls_key_file=pki["client_key"])
    _round_trip(mutual, admin)
    admin.close()


def test_tls_client_certificate_required(servers, pki):
    server = servers(tls=True, extra_args=_tls_args(pki, "yes"))
    tls = {"url": server.url, "tls_ca_file": pki["ca"]}
    mutual = connect(RedisSettings(**tls, tls_cert_file=pki["client_crt"], tls_key_file=pki["client_key"]))
    assert mutual.ping() is True
    mutual.close()
    _fails_fast(RedisSettings(**tls))


def test_unknown_ca_and_plaintext_to_tls_port_fail_fast(servers, pki):
    server = servers(tls=True, extra_args=_tls_args(pki))
    admin = connect(RedisSettings(url=server.url, tls_ca_file=pki["ca"]))
    before = _connections(admin)
    err = _fails_fast(RedisSettings(url=server.url, tls_ca_file=pki["other_ca"]))
    assert "certificate verify failed" in str(err)
    plain_url = server.url.replace("rediss://", "redis://")
    err = _fails_fast(RedisSettings(url=plain_url))
    assert "rediss://" in str(err)
    # each failed once: no retry storm (a refused handshake may not reach the stats)
    assert _connections(admin) - before <= 2
    admin.close()


# -- (d) nothing prints the password -----------------------------------------------------------


def test_tls_and_acl_run_never_logs_a_password(servers, workers, pki, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server, passwords, admin = _acl_fleet(servers, pki)
    tls = {"tls_ca_file": pki["ca"]}
    worker_log = tmp_path / "worker.log"
    settings = _settings(_user(server, "worker", passwords, **tls), log_level="DEBUG")
    proc = workers.start(settings, QUEUE, output=worker_log)
    submitter = RedisSettings(**_user(server, "submitter", passwords, **tls))
    _round_trip(submitter, admin, prefix="svcA")
    bad = submitter.model_copy(update={"password": SecretStr("not-" + passwords["submitter"])})
    errors = [str(_fails_fast(bad))]
    url_with_password = server.url.replace("rediss://", f"rediss://fleet-worker:{passwords['worker']}@")
    shown = [redact_url(url_with_password), repr(settings), str(settings.redis), repr(submitter)]
    proc.terminate()
    assert proc.wait(15) == 0
    logged = worker_log.read_text() + caplog.text
    assert "loaded echo" in logged  # the capture did see the worker's log lines
    for secret in passwords.values():
        for text in (logged, *errors, *shown):
            assert secret not in text
    assert shown[0] == f"rediss://fleet-worker:***@127.0.0.1:{server.port}/0"
    admin.close()
