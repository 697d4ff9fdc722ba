"""The shipped dashboard and alert rules against a real Prometheus scraping a real fleet.

Every PromQL expression of configs/grafana/dashboards/fleet.json and of
configs/alerts.yml goes through Prometheus' HTTP API: each must parse, and each
panel's must return data. promtool checks the shipped config and rules. Needs the
`prometheus` and `promtool` binaries (Debian's prometheus package; scripts/test
installs it); without them these tests skip and say so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.cli.up import running_fleet
from fleet.client import Client
from fleet.redis_server import RedisServer, free_port
from fleet.settings import FleetSettings, QueueSettings
from tests.conftest import ROOT, wait_for

CONFIGS = ROOT / "configs"
DASHBOARD = CONFIGS / "grafana" / "dashboards" / "fleet.json"
ALERTS = CONFIGS / "alerts.yml"
GRAFANA_VARS = {"$__rate_interval": "20s", "$queue": ".*"}

needs_prometheus = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("promtool")),
    reason="prometheus/promtool not installed (apt-get install prometheus; scripts/test does)",
)


def panel_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


@needs_prometheus
@pytest.mark.parametrize("what", [("config", CONFIGS / "prometheus.yml"), ("rules", ALERTS)])
def test_promtool_accepts_the_shipped_configs(what: tuple[str, Path]) -> None:
    kind, path = what
    done = subprocess.run(["promtool", "check", kind, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_provisioned_against_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    sources = yaml.safe_load((CONFIGS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = sources["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    topics = ("queue depth", "wait", "throughput", "batch fill", "desired vs actual", "gpu", "dead letters")
    for topic in topics:
        assert topic in titles


# ----------------------------------------------------------------------------- live


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status == 200
    except OSError:  # HTTPError 503 before the first tick, or not listening yet
        return False


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "fleet", "static_configs": [{"targets": [target]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=self.log)

    def query(self, expr: str) -> dict[str, Any]:
        return _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))  # type: ignore[no-any-return]

    def has(self, expr: str) -> bool:
        try:
            return bool(self.query(expr)["data"]["result"])
        except OSError:
            return False  # not listening yet

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _submit_until(stop: threading.Event, url: str) -> None:
    client = Client(url)
    try:
        while not stop.is_set():
            client.submit_many("echo", [{"n": i} for i in range(5)])
            client.submit("slow", {"n": 1})
            stop.wait(0.05)  # a steady trickle, not a flood
    finally:
        client.close()


@pytest.fixture
def live_fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    settings = FleetSettings(
        redis={"url": redis_server.url},  # type: ignore[arg-type]
        queues={
            "echo": QueueSettings(handler="echo", workers=1, device="sim:1", max_batch=8, max_delay_ms=2),
            "slow": QueueSettings(handler="sleep", workers=1, device="cpu", max_batch=4,
                                  handler_options={"ms_per_batch": 20}),
        },
        worker={"heartbeat_interval_s": 0.2},  # type: ignore[arg-type]
        scaler={"autoscale": False, "use_cgroups": False, "tick_s": 0.5, "metrics_port": port},  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
    )
    stop = threading.Event()
    with running_fleet(settings):
        feeder = threading.Thread(target=_submit_until, args=(stop, redis_server.url), daemon=True)
        feeder.start()
        try:
            yield port
        finally:
            stop.set()
            feeder.join(10)


@needs_prometheus
def test_every_dashboard_and_alert_expression_against_real_prometheus(live_fleet: int,
                                                                      tmp_path: Path) -> None:
    wait_for(lambda: _healthy(live_fleet), 30, "/healthz 200 (the scaler ticked)")
    prom = Prometheus(tmp_path, f"127.0.0.1:{live_fleet}")
    try:
        # enough scrapes for rate() windows, with jobs done on both queues
        wait_for(lambda: prom.has('count_over_time(fleet_scaler_ticks_total[20s]) >= 4'), 60, "scrapes")
        both_queues = 'count(sum by (queue) (increase(fleet_jobs_total{outcome="ok"}[20s])) > 0) >= 2'
        wait_for(lambda: prom.has(both_queues), 60, "jobs done on both queues")
        empty = []
        for title, expr in panel_exprs():
            reply = prom.query(grafana_to_promql(expr))
            assert reply["status"] == "success", (title, expr, reply)
            if not reply["data"]["result"]:
                empty.append((title, expr))
        assert not empty, f"panels without data: {empty}"
        for name, expr in alert_exprs():
            assert prom.query(expr)["status"] == "success", (name, expr)
        values = _get(f"{prom.url}/api/v1/label/queue/values?match[]=fleet_queue_length")["data"]
        assert sorted(values) == ["echo", "slow"]  # the dashboard's $queue variable
        rules = _get(f"{prom.url}/api/v1/rules")["data"]["groups"][0]["rules"]
        assert {r["health"] for r in rules} == {"ok"}, rules
    finally:
        prom.stop()


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 timeout=30).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_file_wires_redis_fleet_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    gpu = services["fleet"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["fleet-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["fleet-cpu"]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("configs/prometheus.yml", "configs/alerts.yml", "configs/grafana/provisioning",
                 "configs/grafana/dashboards"):
        assert path in mounts and (ROOT / path).exists()
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` plugin nor docker-compose: validated as YAML only")
    done = subprocess.run([*cli, "-f", str(ROOT / "compose.yaml"), "--profile", "gpu", "--profile", "cpu",
                           "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
