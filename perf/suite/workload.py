"""What the simulated users do, as data: the run configuration handed to Locust, the Zipf
query picker, the SSE parser and the per-request record files. No Locust import here.

The orchestrator (perf/run.py) writes one `LoadConfig` as JSON and passes its path to the
locustfile in the environment variable `QUARRY_PERF_CONFIG`; the locustfile appends one CSV
line per request to `records` (see `write_record` / `read_records`).
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from perf.suite.stats import Sample

__all__ = [
    "CONFIG_ENV", "LoadConfig", "SSEParser", "ZipfPicker", "parse_weights", "read_records", "write_record",
]

CONFIG_ENV = "QUARRY_PERF_CONFIG"
SCENARIOS = ("search", "chat", "upload", "browse")


@dataclass
class LoadConfig:
    base_url: str
    records: str
    """CSV file the locustfile appends its samples to."""
    keys: list[str] = field(default_factory=list)
    """API keys; user i uses keys[i % len(keys)] (rate limits are per key and per tenant)."""
    collections: list[str] = field(default_factory=list)
    upload_collection: str | None = None
    queries: list[str] = field(default_factory=list)
    """Ranked by popularity: queries[0] is asked most (Zipf)."""
    questions: list[str] = field(default_factory=list)
    zipf_s: float = 1.0
    think_s: tuple[float, float] = (1.0, 2.0)
    weights: dict[str, float] = field(default_factory=lambda: {"search": 1.0})
    search_k: int = 10
    search_mode: str = "hybrid"
    upload_words: tuple[int, int] = (60, 250)
    steps: list[tuple[int, float]] = field(default_factory=lambda: [(10, 20.0)])
    """(users, seconds) held one after the other; the run ends after the last."""
    spawn_rate: float = 10.0
    stop_on_slo: dict[str, float] | None = None
    """Stress: end the run after the first step whose samples break these (see stats.SLO)."""
    settle_s: float = 5.0
    """Seconds at the start of each step left out of its SLO verdict (users still spawning)."""
    warmup_s: float = 0.0
    """Load/endurance: seconds at the start left out of the judged (steady) window, at least
    the spawn time + 2 s. Caches fill and pools open meanwhile; the report shows the whole
    phase too."""
    seed: int = 0
    timeout_s: float = 60.0
    verdicts: str | None = None
    """JSON-lines file where the stress shape writes each step's verdict."""

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> LoadConfig:
        raw = json.loads(Path(path).read_text())
        raw["think_s"] = tuple(raw["think_s"])
        raw["upload_words"] = tuple(raw["upload_words"])
        raw["steps"] = [(int(u), float(d)) for u, d in raw["steps"]]
        return cls(**raw)

    @property
    def duration_s(self) -> float:
        return sum(d for _, d in self.steps)

    def step_at(self, elapsed: float) -> int | None:
        """Index of the step running `elapsed` seconds into the run; None once all are done."""
        edge = 0.0
        for i, (_, d) in enumerate(self.steps):
            edge += d
            if elapsed < edge:
                return i
        return None


def parse_weights(text: str) -> dict[str, float]:
    """`search=85,chat=10,upload=1,browse=4` -> weights; unknown scenarios are an error."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
        weights[name] = float(value) if value else 1.0
        if weights[name] < 0:
            raise ValueError(f"negative weight for {name}")
    if not any(weights.values()):
        raise ValueError("give at least one positive weight")
    return {k: v for k, v in weights.items() if v > 0}


class ZipfPicker:
    """Items ranked by popularity, item of rank r (1-based) picked with probability ∝ 1/r^s:
    a few queries are asked very often and a long tail rarely, as with real search traffic."""

    def __init__(self, items: Sequence[str], s: float = 1.0, rng: random.Random | None = None) -> None:
        if not items:
            raise ValueError("no items to pick from")
        self.items = list(items)
        self.rng = rng or random.Random()  # noqa: S311 - load mix, not crypto
        self.cumulative: list[float] = list(itertools.accumulate(1.0 / float(r) ** s for r in range(1, len(items) + 1)))

    def probability(self, rank: int) -> float:
        """Probability of the item of 1-based `rank`."""
        previous = self.cumulative[rank - 2] if rank > 1 else 0.0
        return (self.cumulative[rank - 1] - previous) / self.cumulative[-1]

    def pick(self) -> str:
        x = self.rng.random() * self.cumulative[-1]
        return self.items[min(bisect.bisect_right(self.cumulative, x), len(self.items) - 1)]

    def expected_hit_rate(self, requests: int) -> float:
        """Share of `requests` picks that repeat an earlier pick (an ideal cache's hit rate)."""
        total = self.cumulative[-1]
        distinct = sum(1 - (1 - (self.cumulative[i] - (self.cumulative[i - 1] if i else 0)) / total) ** requests
                       for i in range(len(self.items)))
        return 1 - distinct / requests if requests else 0.0


class SSEParser:
    """Incremental Server-Sent Events parser: feed lines, get (event, data) when one ends."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self.data and self.event == "message":
                return None
            out = (self.event, "\n".join(self.data))
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None

    def parse(self, lines: Iterable[str]) -> Iterator[tuple[str, str]]:
        for line in lines:
            found = self.feed(line)
            if found:
                yield found
        found = self.feed("")
        if found:
            yield found


_FIELDS = ("t", "name", "ms", "ok", "status", "size", "cache")


def write_record(out: TextIO, sample: Sample) -> None:
    out.write(f"{sample.t:.4f},{sample.name.replace(',', ';')},{sample.ms:.2f},{int(sample.ok)},"
              f"{sample.status},{sample.size},{sample.cache.replace(',', ';')}\n")


def read_records(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    samples = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if len(row) not in (len(_FIELDS) - 1, len(_FIELDS)):
                continue  # a line cut short by a killed process
            try:
                samples.append(Sample(t=float(row[0]), name=row[1], ms=float(row[2]), ok=row[3] == "1",
                                      status=int(row[4]), size=int(row[5]),
                                      cache=row[6] if len(row) > 6 else ""))
            except ValueError:
                continue
    samples.sort(key=lambda s: s.t)
    return samples


def small_document(rng: random.Random, words: tuple[int, int], vocabulary: Sequence[str]) -> str:
    """A small text document for the upload scenario: sentences of words from `vocabulary`."""
    n = rng.randint(*words)
    out, sentence = [], []
    for _ in range(n):
        sentence.append(rng.choice(vocabulary))
        if len(sentence) >= rng.randint(8, 18):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def to_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
