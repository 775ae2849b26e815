"""The bare HTTP ceiling app answers a search-sized payload, like the real endpoint's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from litestar.testing import TestClient

from perf.ceiling import PAYLOAD_ENV, app_factory, synthetic_payload


def test_ceiling_serves_the_synthetic_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PAYLOAD_ENV, raising=False)
    with TestClient(app_factory()) as client:
        response = client.post("/v1/search", json={"query": "hello", "k": 10})
        assert response.status_code == 200
        assert response.json() == synthetic_payload()
        assert 7000 < len(response.content) < 12000
        assert client.post("/v1/search", json={"k": 10}).status_code == 400  # the body is validated
        assert client.get("/healthz").status_code == 200


def test_ceiling_serves_a_captured_payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = {"hits": [{"text": "x" * 100}], "next_cursor": None, "mode": "hybrid", "took_ms": 3.0}
    (tmp_path / "sample.json").write_text(json.dumps(captured))
    monkeypatch.setenv(PAYLOAD_ENV, str(tmp_path / "sample.json"))
    with TestClient(app_factory()) as client:
        assert client.post("/v1/search", json={"query": "q"}).json() == captured
