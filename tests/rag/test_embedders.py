"""Embedders: the real MiniLM graph, the OpenAI-compatible client against a local fake, the
test-only hashing embedder, and the factory."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from core.errors import BadRequest, QuarryError, Unavailable
from core.settings import Settings, load_settings
from rag.embedders import (
    Embedder,
    EmbedderMisconfigured,
    EmbeddingRejected,
    EmbeddingUnavailable,
    HashingEmbedder,
    MiniLMEmbedder,
    OpenAIEmbedder,
    load_tokenizer,
    make_embedder,
)
from rag.embedders.minilm import MAX_TOKENS
from tests.rag.fake_openai import Failure, FakeOpenAI

QUERY = "How do I reset my password?"
RELEVANT = "Steps to recover account access when you forgot your password"
IRRELEVANT = "The quarterly revenue grew by eight percent"
MIXED = [
    "short",
    "A somewhat longer sentence about vector databases and retrieval.",
    "",
    "Postgres row-level security isolates tenants. " * 12,
    "x",
    "Embeddings map text to points in space; near points mean similar texts. " * 3,
    "ünïcödé and emoji 🙂 survive tokenisation",
]
KEY = "sk-test-SECRET-0123456789abcdef"


def make_settings(**overrides: object) -> Settings:
    return load_settings(environ={}, dotenv=None, **overrides)


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- MiniLM (the real int8 graph) ---------------------------------------------------------


@pytest.fixture(scope="module")
async def minilm() -> AsyncIterator[MiniLMEmbedder]:
    embedder = MiniLMEmbedder(batch_size=3)  # small batches: MIXED spans several
    yield embedder
    await embedder.aclose()


async def test_minilm_shape_dtype_and_unit_rows(minilm: MiniLMEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert (minilm.name, minilm.dim, minilm.max_tokens) == ("minilm-l6-v2", 384, 256)
    assert_unit_rows(await minilm.embed([QUERY, RELEVANT]), 2, 384)


async def test_minilm_is_deterministic(minilm: MiniLMEmbedder) -> None:
    first = await minilm.embed(MIXED)
    second = await minilm.embed(MIXED)
    np.testing.assert_array_equal(first, second)


async def test_minilm_semantic_sanity(minilm: MiniLMEmbedder) -> None:
    query, relevant, irrelevant = await minilm.embed([QUERY, RELEVANT, IRRELEVANT])
    assert float(query @ relevant) > float(query @ irrelevant) + 0.3


async def test_minilm_batches_equal_one_by_one_in_original_order(minilm: MiniLMEmbedder) -> None:
    batched = await minilm.embed(MIXED)
    one_by_one = np.vstack([await minilm.embed([text]) for text in MIXED])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    assert_unit_rows(batched, len(MIXED), 384)


async def test_minilm_truncates_long_text(minilm: MiniLMEmbedder) -> None:
    long_text = "retrieval augmented generation " * 2000
    assert len(load_tokenizer().encode(long_text).ids) > 10 * MAX_TOKENS
    [vector] = await minilm.embed([long_text])
    # Only the first 256 word pieces count: the same as embedding a prefix that long.
    [prefix] = await minilm.embed(["retrieval augmented generation " * 200])
    np.testing.assert_allclose(vector, prefix, atol=1e-4)


async def test_minilm_empty_input(minilm: MiniLMEmbedder) -> None:
    out = await minilm.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    with pytest.raises(TypeError):
        await minilm.embed("a bare string")


async def test_minilm_concurrent_callers(minilm: MiniLMEmbedder) -> None:
    texts = [f"document number {i} talks about topic {i % 7}" for i in range(40)]
    expected = await minilm.embed(texts)
    results = await asyncio.gather(*(minilm.embed(texts[i : i + 4]) for i in range(0, 40, 4)))
    np.testing.assert_allclose(np.vstack(results), expected, atol=1e-4)


async def test_minilm_coalesces_concurrent_queries() -> None:
    """Queries that arrive while the graph runs share the next run; each caller gets its own
    rows, equal to embedding it alone."""
    embedder = MiniLMEmbedder(threads=1, batch_size=32)
    try:
        queries = [f"question {i} about topic {i % 5}?" for i in range(24)]
        alone = [await embedder.embed([q]) for q in queries]
        runs = embedder.runs
        together = await asyncio.gather(*(embedder.embed([q]) for q in queries))
        assert embedder.runs - runs < len(queries) / 2
        for one, shared in zip(alone, together, strict=True):
            np.testing.assert_allclose(shared, one, atol=1e-4)
    finally:
        await embedder.aclose()


async def test_minilm_coalesced_caller_cancelled_or_failed() -> None:
    """A caller that gives up does not disturb the others; a failed run fails each of its
    callers (none hangs) and the next call works."""
    embedder = MiniLMEmbedder(threads=1)
    try:
        expected = await embedder.embed(["kept"])
        tasks = [asyncio.create_task(embedder.embed([text])) for text in ("kept", "gone", "kept")]
        await asyncio.sleep(0)
        tasks[1].cancel()
        kept = [await tasks[0], await tasks[2]]
        assert tasks[1].cancelled()
        for vectors in kept:
            np.testing.assert_allclose(vectors, expected, atol=1e-5)

        real_infer = embedder._infer

        def broken(batch: list[list[int]]) -> np.ndarray:
            raise ValueError("graph failed")

        embedder._infer = broken  # type: ignore[method-assign]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(embedder.embed([f"q{i}"]) for i in range(5)), return_exceptions=True), 10)
        assert all(isinstance(o, ValueError) for o in outcomes)
        embedder._infer = real_infer  # type: ignore[method-assign]
        np.testing.assert_allclose(await embedder.embed(["kept"]), expected, atol=1e-5)
    finally:
        await embedder.aclose()


async def test_minilm_runs_off_the_event_loop(minilm: MiniLMEmbedder) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    texts = [f"chunk {i}: " + "the loop must stay responsive while the model runs " * 20 for i in range(48)]
    task = asyncio.create_task(ticker())
    try:
        vectors = await minilm.embed(texts)
    finally:
        stop.set()
        await task
    assert vectors.shape == (48, 384)
    assert ticks >= 3


async def test_minilm_embed_sync_matches_async(minilm: MiniLMEmbedder) -> None:
    sync = await asyncio.to_thread(minilm.embed_sync, MIXED)
    np.testing.assert_allclose(sync, await minilm.embed(MIXED), atol=1e-6)


async def test_minilm_tokenizer_is_shared_and_truncating(minilm: MiniLMEmbedder) -> None:
    counting = load_tokenizer()
    text = "word " * 1000
    assert len(counting.encode(text).ids) == 1002  # no truncation when counting
    assert len(minilm.tokenizer.encode(text).ids) == MAX_TOKENS
    assert counting.encode("Hello world").tokens == ["[CLS]", "hello", "world", "[SEP]"]


async def test_minilm_closed_refuses_work() -> None:
    embedder = MiniLMEmbedder(threads=1)
    await embedder.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await embedder.embed(["x"])


# --- OpenAI-compatible client against the local fake --------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dim=64, api_key=KEY) as server:
        yield server


class RecordingSleep:
    """Stands in for asyncio.sleep: records the back-off delays without waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def openai(fake: FakeOpenAI, sleeps: RecordingSleep) -> AsyncIterator[OpenAIEmbedder]:
    embedder = OpenAIEmbedder(
        base_url=fake.base_url, model="text-embedding-3-small", dim=64, api_key=KEY,
        max_retries=3, timeout_s=5.0, sleep=sleeps,
    )
    yield embedder
    await embedder.aclose()


def expected_vectors(texts: list[str]) -> np.ndarray:
    return HashingEmbedder(64).embed_sync(texts)


async def test_openai_batches_and_sends_auth(fake: FakeOpenAI, openai: OpenAIEmbedder) -> None:
    assert isinstance(openai, Embedder)
    assert openai.name == "openai:text-embedding-3-small"
    texts = [f"text number {i}" for i in range(150)]
    vectors = await openai.embed(texts)
    assert_unit_rows(vectors, 150, 64)
    np.testing.assert_allclose(vectors, expected_vectors(texts), atol=1e-6)
    requests = fake.embedding_requests
    assert sorted(len(r.json()["input"]) for r in requests) == [22, 64, 64]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in requests)
    assert all(r.json()["model"] == "text-embedding-3-small" for r in requests)


async def test_openai_configurable_batch_size(fake: FakeOpenAI) -> None:
    embedder = OpenAIEmbedder(base_url=fake.base_url, model="m", dim=64, api_key=KEY, batch_size=10)
    try:
        await embedder.embed([f"t{i}" for i in range(25)])
    finally:
        await embedder.aclose()
    assert sorted(len(r.json()["input"]) for r in fake.embedding_requests) == [5, 10, 10]


async def test_openai_no_key_sends_no_auth_header() -> None:
    with FakeOpenAI(dim=64) as server:
        embedder = OpenAIEmbedder(base_url=server.base_url, model="m", dim=64)
        try:
            await embedder.embed(["hello"])
        finally:
            await embedder.aclose()
        assert "authorization" not in server.embedding_requests[0].headers


async def test_openai_orders_by_index(openai: OpenAIEmbedder, fake: FakeOpenAI) -> None:
    fake.shuffle = True
    texts = [f"distinct text {i} {'x' * i}" for i in range(20)]
    np.testing.assert_allclose(await openai.embed(texts), expected_vectors(texts), atol=1e-6)


async def test_openai_empty_input(openai: OpenAIEmbedder, fake: FakeOpenAI) -> None:
    out = await openai.embed([])
    assert out.shape == (0, 64) and out.dtype == np.float32
    assert fake.requests == []


async def test_openai_retries_429_then_500_then_succeeds(
    openai: OpenAIEmbedder, fake: FakeOpenAI, sleeps: RecordingSleep
) -> None:
    fake.fail_next(Failure(429, retry_after="0"), Failure(500))
    vectors = await openai.embed(["retry me"])
    np.testing.assert_allclose(vectors, expected_vectors(["retry me"]), atol=1e-6)
    assert len(fake.embedding_requests) == 3
    assert sleeps.delays[0] == 0.0  # Retry-After honoured
    assert 0.25 <= sleeps.delays[1] <= 1.0  # then exponential backoff with jitter (base 0.5 s, step 2)


async def test_openai_retry_after_seconds_and_backoff_growth(
    openai: OpenAIEmbedder, fake: FakeOpenAI, sleeps: RecordingSleep
) -> None:
    fake.fail_next(Failure(503, retry_after="7"), Failure(502), Failure(504))
    await openai.embed(["x"])
    assert sleeps.delays[0] == 7.0
    assert 0.5 <= sleeps.delays[1] <= 1.0 and 1.0 <= sleeps.delays[2] <= 2.0


async def test_openai_persistent_500_is_unavailable(
    openai: OpenAIEmbedder, fake: FakeOpenAI, sleeps: RecordingSleep
) -> None:
    fake.fail_next(*[Failure(500, message="upstream exploded")] * 10)
    with pytest.raises(Unavailable) as info:
        await openai.embed(["x"])
    assert isinstance(info.value, EmbeddingUnavailable) and info.value.status == 503
    assert "upstream exploded" in info.value.detail
    assert len(fake.embedding_requests) == 4  # 1 + max_retries
    assert len(sleeps.delays) == 3


async def test_openai_retries_dropped_connection_and_timeout(
    fake: FakeOpenAI, sleeps: RecordingSleep
) -> None:
    embedder = OpenAIEmbedder(
        base_url=fake.base_url, model="m", dim=64, api_key=KEY, timeout_s=0.5, sleep=sleeps
    )
    fake.fail_next(Failure.dropped(), Failure.timeout(2.0))
    try:
        vectors = await embedder.embed(["still works"])
    finally:
        await embedder.aclose()
    assert vectors.shape == (1, 64)
    assert len(fake.embedding_requests) == 3 and len(sleeps.delays) == 2


async def test_openai_unreachable_is_unavailable(sleeps: RecordingSleep) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", dim=64, max_retries=2, sleep=sleeps
    )
    try:
        with pytest.raises(EmbeddingUnavailable, match="3 attempt"):
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()
    assert len(sleeps.delays) == 2


async def test_openai_400_is_not_retried_and_hides_key(
    openai: OpenAIEmbedder, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next(Failure(400, message=f"input rejected for key {KEY}"))
    with caplog.at_level(logging.DEBUG), pytest.raises(BadRequest) as info:
        await openai.embed(["x"])
    assert isinstance(info.value, EmbeddingRejected)
    assert "input rejected" in info.value.detail
    assert KEY not in str(info.value) and KEY not in info.value.detail and KEY not in repr(openai)
    assert KEY not in caplog.text
    assert len(fake.embedding_requests) == 1


async def test_openai_wrong_key_is_misconfigured_and_hides_key(fake: FakeOpenAI) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"
    embedder = OpenAIEmbedder(base_url=fake.base_url, model="m", dim=64, api_key=wrong)
    try:
        with pytest.raises(EmbedderMisconfigured) as info:
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()
    assert isinstance(info.value, QuarryError) and "401" in info.value.detail
    assert wrong not in info.value.detail
    assert len(fake.embedding_requests) == 1


async def test_openai_wrong_dimension_is_a_clear_error(fake: FakeOpenAI) -> None:
    embedder = OpenAIEmbedder(base_url=fake.base_url, model="m", dim=1536, api_key=KEY)
    try:
        with pytest.raises(EmbedderMisconfigured, match=r"64-dimensional.*1536"):
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()


async def test_openai_malformed_response_is_unavailable(fake: FakeOpenAI, openai: OpenAIEmbedder) -> None:
    from tests.rag.fake_openai import Reply

    fake.route("POST", fake.EMBEDDINGS, lambda request: Reply(200, {"data": [{"embedding": [1.0]}]}))
    with pytest.raises(EmbeddingUnavailable, match="malformed"):
        await openai.embed(["x"])


def test_fake_server_routes_stream_and_errors() -> None:
    import httpx

    from tests.rag.fake_openai import FakeServer, Reply

    def boom(request: object) -> Reply:
        raise ValueError("bug in a fake")

    with FakeServer() as server:
        server.route("POST", "/v1/chat/completions", lambda r: Reply(200, iter([b"data: 1\n\n", b"data: 2\n\n"])))
        server.route("GET", "/boom", boom)
        with httpx.Client(base_url=server.url) as client:
            with client.stream("POST", "/v1/chat/completions", json={"stream": True}) as response:
                assert b"".join(response.iter_bytes()) == b"data: 1\n\ndata: 2\n\n"
            assert client.get("/boom").status_code == 500
            assert client.get("/nowhere").status_code == 404
    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/boom", "/nowhere"]
    assert server.requests[0].json() == {"stream": True}
    assert isinstance(server.errors[0], ValueError)


# --- the test-only hashing embedder and the factory ---------------------------------------


async def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    embedder = HashingEmbedder(32)
    texts = ["The cat sat", "the CAT sat down", "stock market report", ""]
    vectors = await embedder.embed(texts)
    assert_unit_rows(vectors, 4, 32)
    np.testing.assert_array_equal(vectors, HashingEmbedder(32).embed_sync(texts))
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert (await embedder.embed([])).shape == (0, 32)


def test_make_embedder_minilm_by_default() -> None:
    embedder = make_embedder(make_settings(embedder_threads=1, embed_batch_size=8))
    assert isinstance(embedder, MiniLMEmbedder)
    assert (embedder.name, embedder.dim, embedder.threads, embedder.batch_size) == ("minilm-l6-v2", 384, 1, 8)
    embedder.close()


def test_make_embedder_for_queries_uses_the_query_threads() -> None:
    settings = make_settings(embedder_threads=3, query_embedder_threads=1)
    for for_queries, threads in ((False, 3), (True, 1)):
        embedder = make_embedder(settings, for_queries=for_queries)
        assert isinstance(embedder, MiniLMEmbedder) and embedder.threads == threads
        embedder.close()


async def test_make_embedder_openai() -> None:
    settings = make_settings(
        embedder="openai", openai_base_url="http://127.0.0.1:9/v1/", openai_embed_model="nomic-embed",
        openai_embed_dim=768, openai_api_key=KEY,
    )
    embedder = make_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    assert (embedder.name, embedder.dim) == ("openai:nomic-embed", 768)
    assert KEY not in repr(embedder)
    await embedder.aclose()
