"""The STS Benchmark job: embed both sentences of every pair, score each pair by
cosine similarity, and report the Spearman correlation with the human scores."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ConfigError
from fleet.stats import cosine, spearman

DEFAULT_PATHS = (
    Path("../shared/data/stsb/stsb-en-dev.csv"),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "stsb-en-dev.csv",
)


@dataclass(frozen=True)
class Pair:
    sentence1: str
    sentence2: str
    score: float


def default_path() -> Path:
    for path in DEFAULT_PATHS:
        if path.exists():
            return path
    raise ConfigError("STS-B file not found: pass --csv PATH (the dev split's stsb-en-dev.csv)")


def read_pairs(path: Path, limit: int | None = None) -> list[Pair]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, dialect="excel"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    pairs = []
    for lineno, row in enumerate(rows, 1):
        if lineno == 1 and row and row[0] == "sentence1":
            continue  # header, when present
        if len(row) != 3:
            raise ConfigError(f"{path}:{lineno}: want sentence1,sentence2,score; got {len(row)} columns")
        try:
            pairs.append(Pair(row[0], row[1], float(row[2])))
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: score {row[2]!r} is not a number") from None
    return pairs[:limit] if limit is not None else pairs


def sentences_of(pairs: Sequence[Pair]) -> list[str]:
    """Both sentences of every pair, in pair order: s1, s2, s1, s2, ..."""
    return [s for p in pairs for s in (p.sentence1, p.sentence2)]


def pair_cosines(embeddings: Sequence[Sequence[float]]) -> list[float]:
    return [cosine(embeddings[i], embeddings[i + 1]) for i in range(0, len(embeddings), 2)]


def spearman_of(pairs: Sequence[Pair], embeddings: Sequence[Sequence[float]]) -> float:
    return spearman(pair_cosines(embeddings), [p.score for p in pairs])
