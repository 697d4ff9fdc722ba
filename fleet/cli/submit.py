"""`fleet submit QUEUE --file/--csv`: submit a file of jobs with a progress bar."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import click

from fleet.cli.common import emit_json, handle_errors, load_connected
from fleet.client import Client
from fleet.codec import STATUS_OK
from fleet.errors import ConfigError

CHUNK = 1000


def read_jsonl(path: Path) -> list[Any]:
    payloads = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                payloads.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not a JSON value: {exc.msg}") from None
    return payloads


def read_csv_column(path: Path, column: str | None) -> list[str]:
    """A CSV column: by 0-based number (every row is data), or by header name
    (the first row is the header). Default: column 0, no header."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, dialect="excel"))
    if not rows:
        return []
    if column is None or column.isdigit():
        index = int(column or 0)
        short = [n for n, r in enumerate(rows, 1) if len(r) <= index]
        if short:
            raise ConfigError(f"{path}:{short[0]}: no column {index} (rows have {len(rows[short[0] - 1])})")
        return [r[index] for r in rows]
    header = rows[0]
    if column not in header:
        raise ConfigError(f"{path}: no column named {column!r} in the header row "
                          f"(give a 0-based number for a file without a header)")
    index = header.index(column)
    return [r[index] for r in rows[1:] if len(r) > index]


def load_payloads(file: Path | None, csv_path: Path | None, column: str | None) -> list[Any]:
    if (file is None) == (csv_path is None):
        raise click.UsageError("give exactly one of --file (JSON lines) or --csv")
    try:
        return read_jsonl(file) if file is not None else read_csv_column(csv_path, column)  # type: ignore[arg-type]
    except OSError as exc:
        raise ConfigError(f"cannot read {file or csv_path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{file or csv_path} is not a UTF-8 text file of jobs: {exc}") from None


@click.command("submit")
@click.argument("queue")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON lines: one payload per line")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV file: one job per row of --column")
@click.option("--column", help="CSV column: a 0-based number (no header row) or a header name "
              "(default: 0)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="write outcomes (or, with --no-wait, job IDs) here as JSON lines, in input order")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for every outcome")
@click.option("--timeout-s", type=click.FloatRange(min=0.001), default=3600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.pass_context
@handle_errors
def submit_cmd(ctx: click.Context, queue: str, file: Path | None, csv_path: Path | None,
               column: str | None, out: Path | None, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Submit every job of a file to QUEUE, with progress, and report the outcome."""
    payloads = load_payloads(file, csv_path, column)
    settings = load_connected(ctx)
    started = time.perf_counter()
    with Client(settings.redis, reply=wait) as client:
        ids = submit_with_progress(client, queue, payloads, show=not as_json)
        submitted_s = time.perf_counter() - started
        outcomes = wait_with_progress(client, queue, ids, timeout_s, show=not as_json) if wait else {}
    wall_s = time.perf_counter() - started
    ok = sum(1 for o in outcomes.values() if o.status == STATUS_OK)
    if out is not None:
        write_out(out, ids, outcomes if wait else None)
    summary = {"queue": queue, "submitted": len(ids), "ok": ok, "failed": len(outcomes) - ok,
               "submit_s": round(submitted_s, 3), "wall_s": round(wall_s, 3),
               "jobs_per_s": round(len(ids) / wall_s, 1) if wall_s > 0 else None}
    if not wait:
        summary["ids"] = ids
    if as_json:
        emit_json(summary)
    else:
        if not wait and out is None:
            click.echo("\n".join(ids))
        click.echo(f"{len(ids)} jobs submitted to {queue} in {submitted_s:.2f}s"
                   + (f"; {ok} ok, {len(outcomes) - ok} failed; {wall_s:.2f}s wall, "
                      f"{summary['jobs_per_s']} jobs/s" if wait else ""))
    if wait and ok < len(ids):
        ctx.exit(5)


def write_out(out: Path, ids: list[str], outcomes: dict | None) -> None:
    """One JSON line per job, in input order: its ID, and its outcome when waited for."""
    with out.open("w", encoding="utf-8") as f:
        for job_id in ids:
            line: dict[str, Any] = {"id": job_id}
            if outcomes is not None:
                o = outcomes[job_id]
                line.update(status=o.status, value=o.value, error=o.error)
            f.write(json.dumps(line, default=repr) + "\n")


def submit_with_progress(client: Client, queue: str, payloads: list[Any], show: bool) -> list[str]:
    ids: list[str] = []
    with click.progressbar(length=len(payloads), label="submitting", file=None if show else io.StringIO(),
                           show_pos=True) as bar:
        for start in range(0, len(payloads), CHUNK):
            chunk = payloads[start : start + CHUNK]
            ids.extend(job.id for job in client.submit_many(queue, chunk))
            bar.update(len(chunk))
    return ids


def wait_with_progress(client: Client, queue: str, ids: list[str], timeout_s: float, show: bool) -> dict:
    outcomes = {}
    with click.progressbar(length=len(ids), label="running   ", file=None if show else io.StringIO(),
                           show_pos=True, show_eta=True) as bar:
        for job_id, outcome in client.iter_outcomes(queue, ids, timeout_s):
            outcomes[job_id] = outcome
            bar.update(1)
    return outcomes
