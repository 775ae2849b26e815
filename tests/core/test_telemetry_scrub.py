"""Sentry never receives credentials: no frame locals, a deny list applied anywhere in the event,
and credentials inside free text (URLs with userinfo, bearer values, API keys) masked."""

from __future__ import annotations

import json

import msgspec
import pytest
import sentry_sdk
from sentry_sdk.transport import Transport

from core import telemetry
from core.settings import load_settings

SECRET = "wJalrXUtnFEMI-K7MDENG-hunter2"
KEY = "qk_AbCdEfGh_" + "Z" * 43


class _Capture(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[str] = []

    def capture_envelope(self, envelope) -> None:  # type: ignore[no-untyped-def]
        self.envelopes.append(envelope.serialize().decode("utf-8", "replace"))


def _settings():
    return msgspec.structs.replace(load_settings(environ={}, dotenv=None),
                                   sentry_dsn="https://public@o0.ingest.sentry.io/1")


def test_options_turn_frame_locals_off_and_scrub_every_event():
    options = telemetry.sentry_options(_settings(), "test")
    assert options["include_local_variables"] is False and not options.get("send_default_pii")
    assert options["before_send"] is telemetry.scrub_event is options["before_send_transaction"]
    assert options["max_request_body_size"] == "never"
    for word in ("secret_access_key", "access_key_id", "config", "password", "authorization"):
        assert word in options["event_scrubber"].denylist


def test_a_real_exception_report_carries_no_secret():
    """Through the SDK itself: an exception raised where locals and the message hold secrets."""
    transport = _Capture()
    # No integrations: a test must not patch asyncpg, logging, ... for the rest of the session.
    options = {**telemetry.sentry_options(_settings(), "test"), "transport": transport,
               "default_integrations": False, "auto_enabling_integrations": False}
    client = sentry_sdk.Client(**options)

    def connect(config: dict, database_url: str) -> None:
        password = SECRET  # noqa: F841 - a local the report must not carry
        raise ConnectionError(f"cannot reach {database_url} with {config} (Authorization: Bearer {KEY})")

    with sentry_sdk.isolation_scope() as scope:
        scope.set_client(client)
        scope.set_extra("source_config", {"bucket": "docs", "secret_access_key": SECRET})
        sentry_sdk.add_breadcrumb(message=f"GET https://admin:{SECRET}@minio.internal/docs", category="http")
        sentry_sdk.add_breadcrumb(message=f"redis at redis://:{SECRET}@cache:6379/0", category="log")
        try:
            connect({"access_key_id": "AKIAEXAMPLE1234", "secret_access_key": SECRET},
                    f"postgresql://quarry:{SECRET}@db/quarry")
        except ConnectionError as exc:
            sentry_sdk.capture_exception(exc)
    client.flush(timeout=5)
    assert transport.envelopes, "the event was not sent at all"
    sent = "\n".join(transport.envelopes)
    assert "ConnectionError" in sent and "cannot reach postgresql://quarry:" in sent  # still useful
    assert SECRET not in sent and KEY not in sent and "AKIAEXAMPLE1234" not in sent
    assert '"vars"' not in sent


@pytest.mark.parametrize("where", ["extra", "contexts", "breadcrumb"])
def test_deny_listed_keys_are_filtered_anywhere(where):
    payload = {"config": {"bucket": "b", "secret_access_key": SECRET}, "api_token": SECRET,
               "database_url": f"postgresql://u:{SECRET}@h/db", "nested": [{"password": SECRET}], "count": 3}
    event: dict = {"message": "x"}
    if where == "extra":
        event["extra"] = payload
    elif where == "contexts":
        event["contexts"] = {"job": payload}
    else:
        event["breadcrumbs"] = {"values": [{"message": "m", "data": payload}]}
    scrubbed = telemetry.scrub_event(event)
    text = json.dumps(scrubbed)
    assert SECRET not in text
    assert '"count": 3' in text  # harmless values stay


@pytest.mark.parametrize(("text", "gone"), [
    (f"Authorization: Bearer {KEY}", KEY),
    (f"bad key {KEY} given", KEY),
    (f"fetch https://u:{SECRET}@host/x failed", SECRET),
    (f"dsn=postgresql://host/db?password={SECRET}", SECRET),
    (f"config {{'secret_access_key': '{SECRET}', 'bucket': 'b'}}", SECRET),
    (f"--api-token={SECRET} --verbose", SECRET),
])
def test_free_text_credentials_are_masked(text, gone):
    assert gone not in telemetry.scrub_text(text)


def test_frame_vars_are_dropped_even_if_present():
    event = {"exception": {"values": [{"type": "E", "value": "v", "stacktrace": {"frames": [
        {"function": "f", "vars": {"harmless_name": SECRET}}]}}]}}
    assert SECRET not in json.dumps(telemetry.scrub_event(event))


def test_scrubbing_hostile_text_is_linear():
    """Runs of the characters the patterns look for: quadratic code would take minutes here."""
    import subprocess
    import sys

    code = ("from core.telemetry import scrub_text\n"
            "for t in ['secret' * 400_000, 'secret:' + ' ' * 2_000_000, '://' * 800_000, 'a' * 2_000_000 + '://',"
            " 'qk_' * 700_000, 'Bearer ' * 300_000, 'password=' * 250_000]:\n"
            "    scrub_text(t)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
