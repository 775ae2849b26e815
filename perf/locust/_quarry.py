"""Shared by the locustfiles: the run configuration, the per-request recorder, the step shape
(load, stress and endurance all run as steps) and the Quarry user with its four tasks.

Each locustfile imports what it needs from here; Locust runs the User classes and the
`StepShape` it finds in the locustfile's namespace. Configuration comes from the JSON file
named by QUARRY_PERF_CONFIG (written by perf/run.py; see perf/suite/workload.py).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import random
import time
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, events

from perf.suite.stats import SLO, USERS, Sample, verdict, window
from perf.suite.workload import CONFIG_ENV, LoadConfig, SSEParser, ZipfPicker, small_document, write_record

__all__ = ["CONFIG", "QuarryUser", "StepShape"]

CONFIG = LoadConfig.load(os.environ[CONFIG_ENV])


class Recorder:
    """Appends one CSV line per request to CONFIG.records; keeps samples in memory for the
    stress shape's verdicts."""

    def __init__(self, path: str, keep: bool) -> None:
        self.out = open(path, "a", buffering=1 << 16)
        self.keep = keep
        self.samples: list[Sample] = []
        atexit.register(self.close)

    def add(self, sample: Sample) -> None:
        write_record(self.out, sample)
        if self.keep:
            self.samples.append(sample)

    def close(self) -> None:
        if not self.out.closed:
            self.out.close()


RECORDER = Recorder(CONFIG.records, keep=CONFIG.stop_on_slo is not None)


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, response_length: int,
                exception: BaseException | None = None, response: Any = None, start_time: float | None = None,
                **_kw: Any) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    cache = ""
    if name == "search" and response is not None:
        try:
            cache = str(response.headers.get("x-cache") or "").lower()
        except (AttributeError, TypeError):
            cache = ""
    RECORDER.add(Sample(t=start_time or time.time() - response_time / 1000, name=name, ms=response_time,
                        ok=exception is None, status=status, size=int(response_length or 0), cache=cache))


def _count_users(environment: Any) -> None:
    while True:
        runner = environment.runner
        if runner is not None:
            RECORDER.add(Sample(t=time.time(), name=USERS, ms=runner.user_count))
        gevent.sleep(1.0)


@events.test_start.add_listener
def _on_start(environment: Any, **_kw: Any) -> None:
    gevent.spawn(_count_users, environment)


@events.quitting.add_listener
def _on_quit(**_kw: Any) -> None:
    RECORDER.close()


class StepShape(LoadTestShape):
    """Hold CONFIG.steps one after the other. With CONFIG.stop_on_slo (stress), judge each
    step when it ends (its first `settle_s` left out) and end the run after the first step that
    breaks the SLO; every verdict is written to CONFIG.verdicts as one JSON line."""

    def __init__(self) -> None:
        super().__init__()
        self.current: int | None = None
        self.epoch: float | None = None

    def _judge(self, index: int) -> bool:
        assert self.epoch is not None and CONFIG.stop_on_slo is not None
        begin = self.epoch + sum(d for _, d in CONFIG.steps[:index])
        end = begin + CONFIG.steps[index][1]
        v = verdict(window(RECORDER.samples, begin + CONFIG.settle_s, end), SLO(**CONFIG.stop_on_slo))
        if CONFIG.verdicts:
            with open(CONFIG.verdicts, "a") as out:
                out.write(json.dumps({"step": index, "users": CONFIG.steps[index][0], "start": begin, "end": end,
                                      "broken": v.broken, "reasons": v.reasons, "api_p95_ms": v.api_p95_ms,
                                      "llm_p95_ms": v.llm_p95_ms, "error_rate": v.error_rate,
                                      "count": v.count}) + "\n")
        return v.broken

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if self.epoch is None:
            self.epoch = time.time() - elapsed
        index = CONFIG.step_at(elapsed)
        if index != self.current:
            if self.current is not None and CONFIG.stop_on_slo is not None and self._judge(self.current):
                return None
            self.current = index
        if index is None:
            return None
        return CONFIG.steps[index][0], CONFIG.spawn_rate


_user_numbers = itertools.count()
_QUERIES = ZipfPicker(CONFIG.queries, CONFIG.zipf_s, random.Random(CONFIG.seed)) if CONFIG.queries else None  # noqa: S311
_VOCABULARY = " ".join(CONFIG.queries or ["quarry"]).lower().split()


class QuarryUser(FastHttpUser):
    """One API client: an API key of its own (round-robin over CONFIG.keys), think time
    between tasks, and the four things users do."""

    abstract = True
    wait_time = between(*CONFIG.think_s)
    host = CONFIG.base_url
    network_timeout = CONFIG.timeout_s
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.number = next(_user_numbers)
        self.rng = random.Random(f"{CONFIG.seed}:{self.number}")  # noqa: S311
        key = CONFIG.keys[self.number % len(CONFIG.keys)] if CONFIG.keys else ""
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.uploads = 0

    # --- tasks ---------------------------------------------------------------------------
    def search(self) -> None:
        assert _QUERIES is not None
        body: dict[str, Any] = {"query": _QUERIES.pick(), "k": CONFIG.search_k, "mode": CONFIG.search_mode}
        if CONFIG.collections:
            body["collections"] = CONFIG.collections
        self.client.post("/v1/search", json=body, headers=self.headers, name="search")

    def browse(self) -> None:
        params = f"?limit=20&collection_id={CONFIG.collections[0]}" if CONFIG.collections else "?limit=20"
        response = self.client.get("/v1/documents" + params, headers=self.headers, name="browse list")
        try:
            items = response.json().get("items") or []
        except (ValueError, AttributeError, TypeError):
            return
        if items:
            doc = self.rng.choice(items)
            self.client.get(f"/v1/documents/{doc['id']}", headers=self.headers, name="browse get")

    def upload(self) -> None:
        collection = CONFIG.upload_collection or (CONFIG.collections[0] if CONFIG.collections else None)
        if collection is None:
            return
        self.uploads += 1
        text = small_document(self.rng, CONFIG.upload_words, _VOCABULARY)
        body = {"text": text, "title": f"perf upload {self.number}-{self.uploads}", "format": "txt",
                "uri": f"perf-upload://{CONFIG.seed}/{os.getpid()}/{self.number}/{self.uploads}/{time.time_ns()}"}
        self.client.post(f"/v1/collections/{collection}/documents", json=body, headers=self.headers, name="upload")

    def chat(self) -> None:
        """One streamed chat: `chat open` (time to response headers), `chat ttft` (first
        `token` event), `chat total` (the `done` event; failed on `error` or a cut stream)."""
        question = self.rng.choice(CONFIG.questions) if CONFIG.questions else (
            _QUERIES.pick() if _QUERIES else "what is quarry?")
        body: dict[str, Any] = {"message": question, "stream": True}
        if CONFIG.collections:
            body["collections"] = CONFIG.collections
        fire = self.environment.events.request.fire
        started, t0 = time.time(), time.perf_counter()
        ttft: float | None = None
        outcome: BaseException | None = RuntimeError("stream ended without a done event")
        with self.client.post("/v1/chat", json=body, headers={**self.headers, "Accept": "text/event-stream"},
                              name="chat open", stream=True, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                outcome = RuntimeError(f"HTTP {response.status_code}")
            else:
                response.success()
                parser = SSEParser()
                stream = response._response  # geventhttpclient response: readline returns as lines arrive
                try:
                    while stream is not None:
                        line = stream.readline(b"\n")
                        if not line:
                            break
                        event = parser.feed(line.decode("utf-8", "replace"))
                        if event is None:
                            continue
                        if event[0] == "token" and ttft is None:
                            ttft = (time.perf_counter() - t0) * 1000
                        elif event[0] == "done":
                            outcome = None
                            break
                        elif event[0] == "error":
                            outcome = RuntimeError(f"error event: {event[1][:200]}")
                            break
                except Exception as exc:  # a cut or timed-out stream
                    outcome = exc
        total = (time.perf_counter() - t0) * 1000
        if ttft is None and outcome is None:
            ttft = total  # an answer without token events: the first thing the user sees is `done`
        if ttft is not None or outcome is not None:
            fire(request_type="SSE", name="chat ttft", response_time=ttft if ttft is not None else total,
                 response_length=0, exception=outcome if ttft is None else None, context={},
                 start_time=started, response=response)
        fire(request_type="SSE", name="chat total", response_time=total, response_length=0, exception=outcome,
             context={}, start_time=started, response=response)


def tasks_from_weights(weights: dict[str, float]) -> dict[Any, int]:
    """Locust task weights (integers) from CONFIG.weights-style floats, keeping the ratios."""
    scale = 100 / max(weights.values())
    table = {"search": QuarryUser.search, "chat": QuarryUser.chat, "upload": QuarryUser.upload,
             "browse": QuarryUser.browse}
    return {table[name]: max(1, round(w * scale)) for name, w in weights.items() if w > 0}
