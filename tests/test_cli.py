"""The CLI: real commands against a real redis-server; bad arguments give clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fleet import keys
from fleet.cli import main
from fleet.cli.up import publish_queues
from fleet.client import Client
from tests.conftest import make_settings, wait_for


def run(*args: str, input: str | None = None):
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result


def _config(tmp_path, url: str, body: str) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"redis:\n  url: {url}\nqueues:\n{body}")
    return str(path)


def test_submit_a_file_with_progress_and_outcomes(tmp_path, redis_server, rconn, workers):
    cfg = _config(tmp_path, redis_server.url, "  echo:\n    handler: echo\n")
    settings = make_settings(redis_server.url, echo={"handler": "echo"})
    workers.start(settings, "echo")
    wait_for(lambda: rconn.hlen(keys.WORKERS) >= 1, what="worker registered")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(300)))
    out = tmp_path / "out.jsonl"
    result = run("-c", cfg, "submit", "echo", "--file", str(jobs), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["submitted"], summary["ok"], summary["failed"]) == (300, 300, 0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["value"] for line in lines] == [{"n": i} for i in range(300)]


def test_dlq_ls_show_replay_purge(tmp_path, redis_server, rconn, workers):
    body = ("  q:\n    handler: sleep\n    max_deliveries: 1\n"
            "    handler_options: {ms_per_batch: 1, allow_raise: true}\n")
    cfg = _config(tmp_path, redis_server.url, body)
    options = {"ms_per_batch": 1, "allow_raise": True}
    settings = make_settings(redis_server.url, q={"handler": "sleep", "max_deliveries": 1,
                                                  "handler_options": options})
    workers.start(settings, "q")
    wait_for(lambda: rconn.hlen(keys.WORKERS) >= 1, what="worker registered")
    with Client(redis_server.url) as client:
        dead = client.submit("q", {"raise": "bad input"})
        assert dead.outcome(timeout_s=10).status == "dead"
    listed = json.loads(run("-c", cfg, "dlq", "ls", "q", "--json").output)
    assert [(d["id"], d["error"], d["attempts"]) for d in listed] == [(dead.id, "RuntimeError: bad input", 1)]
    shown = run("-c", cfg, "dlq", "show", "q", dead.id)
    assert "try 1: RuntimeError: bad input" in shown.output
    assert run("-c", cfg, "dlq", "replay", "q", dead.id).output.strip() == "replayed 1 job(s) to q"
    wait_for(lambda: rconn.xlen(keys.dlq("q")) == 1, what="the replayed job dead again")
    assert run("-c", cfg, "dlq", "purge", "q", "--yes").output.strip() == "purged 1 dead letter(s)"
    assert rconn.xlen(keys.dlq("q")) == 0


@pytest.mark.parametrize("args,code,message", [
    (["submit", "echo"], 2, "give exactly one of --file"),
    (["devices", "--select", "quantum"], 2, "bad device selector"),
    (["dlq", "replay", "q"], 2, "name JOB_IDS or pass --all"),
    (["scale"], 2, "Missing argument"),
    (["job", "q"], 2, "Missing argument"),
    (["nonsense"], 2, "No such command"),
])
def test_malformed_arguments_are_usage_errors(args, code, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_config_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("queues:\n  q:\n    handler: echo\n    max_batch: -3\n")
    result = CliRunner().invoke(main, ["-c", str(path), "acl", "print"])
    assert result.exit_code == 3
    assert "queues.q.max_batch = -3" in result.output and "Traceback" not in result.output


def test_unreachable_redis_is_one_clear_line_in_a_real_process(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("redis:\n  url: redis://127.0.0.1:1/0\n  connect_timeout_s: 0.5\nqueues: {}\n")
    proc = subprocess.run([sys.executable, "-m", "fleet.cli", "-c", str(path), "job", "q", "1-0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert proc.stderr.startswith("fleet: error: cannot reach Redis")
    assert "Traceback" not in proc.stderr


def test_acl_print_covers_every_queue(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("queues:\n  alpha:\n    handler: echo\n  beta:\n    handler: embed\n")
    out = run("-c", str(path), "acl", "print").output
    assert out.count("ACL SETUSER") == 3
    assert "fleet:{alpha}:jobs" in out and "fleet:{beta}:jobs" in out


def test_publish_then_status_json(tmp_path, redis_server, rconn):
    settings = make_settings(redis_server.url, q={"handler": "echo"})
    publish_queues(rconn, settings)
    cfg = _config(tmp_path, redis_server.url, "  q:\n    handler: echo\n")
    result = run("-c", cfg, "status", "--json")
    assert result.exit_code == 0, result.output
    assert "q" in result.output


def test_status_shows_a_host_without_cgroups(tmp_path, redis_server):
    from fleet.cli.up import scaler_loop
    from fleet.settings import FleetSettings

    settings = FleetSettings(
        redis={"url": redis_server.url},  # type: ignore[arg-type]
        queues={"q": {"handler": "echo", "workers": 0, "device": "cpu"}},  # type: ignore[dict-item]
        scaler={"autoscale": False, "cgroup_root": tmp_path},  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
    )
    cfg = _config(tmp_path, redis_server.url, "  q:\n    handler: echo\n")
    with scaler_loop(settings):
        data = json.loads(run("-c", cfg, "status", "--json").output)
        text = run("-c", cfg, "status").output
    assert len(data["hosts"]) == 1
    host = data["hosts"][0]
    assert host["cgroups"].startswith("off: ") and host["isolation"].startswith("off")
    assert "CGROUPS" in text and "off: " in text
