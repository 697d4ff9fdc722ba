"""`fleet demo`: the STS-B dev split through a whole fleet, with the verdict.

Brings a fleet up exactly as `fleet up` does (private redis-server unless a URL
is configured), submits every sentence, waits for every embedding, and prints
sentences, wall time, sentences/s and the Spearman correlation — next to the same
model called directly in this process, unless --no-direct.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from fleet import keys
from fleet.cli.common import emit_json, handle_errors, load
from fleet.cli.submit import submit_with_progress, wait_with_progress
from fleet.client import Client
from fleet.codec import STATUS_OK, unpack
from fleet.errors import FleetError
from fleet.logs import setup_logging
from fleet.stats import cosine
from fleet.stsb import default_path, read_pairs, sentences_of, spearman_of


def wait_ready(client: Client, queue: str, timeout_s: float) -> float:
    """Block until a worker of the queue has loaded its model; seconds waited."""
    started = time.perf_counter()
    conn = client._redis
    while time.perf_counter() - started < timeout_s:
        for raw in conn.hvals(keys.WORKERS):
            info = unpack(raw)  # type: ignore[arg-type]
            ready = isinstance(info, dict) and info.get("state") in ("idle", "busy")
            if ready and info.get("queue") == queue:
                return time.perf_counter() - started
        time.sleep(0.1)
    raise FleetError(f"no worker of queue {queue!r} became ready within {timeout_s:.0f}s "
                     "(see the worker logs under the state dir)")


@click.command("demo")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="STS-B CSV (default: ../shared/data/stsb/stsb-en-dev.csv)")
@click.option("--queue", default="embed", show_default=True)
@click.option("--limit", type=click.IntRange(min=2), help="only the first N pairs")
@click.option("--direct/--no-direct", default=True, show_default=True,
              help="also run the model in-process and compare")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def demo_cmd(ctx: click.Context, csv_path: Path | None, queue: str, limit: int | None,
             direct: bool, as_json: bool) -> None:
    """Embed the STS-B dev split through the fleet and report the Spearman."""
    from fleet.cli.up import running_fleet

    settings = load(ctx)
    setup_logging("WARNING" if as_json else settings.log_level, settings.log_json)
    q = settings.queue(queue)
    pairs = read_pairs(csv_path or default_path(), limit)
    sentences = sentences_of(pairs)
    with running_fleet(settings) as fleet, Client(fleet.settings.redis) as client:
        ready_s = wait_ready(client, queue, 300)
        started = time.perf_counter()
        ids = submit_with_progress(client, queue, sentences, show=not as_json)
        outcomes = wait_with_progress(client, queue, ids, 3600, show=not as_json)
        wall_s = time.perf_counter() - started
    failed = [o.error for o in outcomes.values() if o.status != STATUS_OK]
    if failed:
        raise FleetError(f"{len(failed)} embeddings failed, first: {failed[0]}")
    vectors = [outcomes[i].value for i in ids]
    report = {
        "pairs": len(pairs), "sentences": len(sentences), "workers": q.workers,
        "model_ready_s": round(ready_s, 2), "wall_s": round(wall_s, 3),
        "sentences_per_s": round(len(sentences) / wall_s, 1),
        "spearman": round(spearman_of(pairs, vectors), 6),
    }
    if direct:
        report.update(direct_report(pairs, sentences, vectors, q.max_batch))
    if as_json:
        emit_json(report)
    else:
        print_report(report)


def direct_report(pairs: list, sentences: list[str], vectors: list, batch: int) -> dict:
    from worker.handlers.embed import MiniLM

    model = MiniLM("cpu")
    started = time.perf_counter()
    direct = []
    for start in range(0, len(sentences), batch):
        direct.extend(model.encode(sentences[start : start + batch]).tolist())
    wall_s = time.perf_counter() - started
    return {
        "direct_wall_s": round(wall_s, 3),
        "direct_sentences_per_s": round(len(sentences) / wall_s, 1),
        "direct_spearman": round(spearman_of(pairs, direct), 6),
        "min_cosine_fleet_vs_direct": round(
            min(cosine(a, b) for a, b in zip(vectors, direct, strict=True)), 7
        ),
    }


def print_report(r: dict) -> None:
    click.echo("")
    click.echo(f"STS-B dev: {r['pairs']} pairs, {r['sentences']} sentences, {r['workers']} worker(s)")
    click.echo(f"  model ready in      {r['model_ready_s']:.2f} s")
    click.echo(f"  fleet wall time     {r['wall_s']:.2f} s   ({r['sentences_per_s']:.1f} sentences/s)")
    click.echo(f"  Spearman (fleet)    {r['spearman']:.4f}")
    if "direct_spearman" in r:
        click.echo(f"  direct, in-process  {r['direct_wall_s']:.2f} s   ({r['direct_sentences_per_s']:.1f} "
                   "sentences/s, one process, same batch size)")
        click.echo(f"  Spearman (direct)   {r['direct_spearman']:.4f}")
        click.echo(f"  min cosine fleet vs direct: {r['min_cosine_fleet_vs_direct']:.6f}")
