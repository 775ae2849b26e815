"""load_settings: defaults, precedence (env over .env over defaults) and validation."""

from __future__ import annotations

import pytest

from core.settings import Settings, SettingsError, env_name, load_settings


def test_defaults(tmp_path):
    s = load_settings(environ={}, dotenv=tmp_path / "missing.env")
    assert s.database_url is None and s.redis_url is None
    assert (s.host, s.port, s.log_level, s.app_db_user) == ("127.0.0.1", 8000, "info", "quarry_app")
    assert (s.db_pool_min, s.db_pool_max, s.max_json_bytes) == (1, 10, 1_048_576)
    assert 2 <= s.api_workers <= 8


def test_env_names():
    assert env_name("database_url") == "DATABASE_URL"
    assert env_name("redis_url") == "REDIS_URL"
    assert env_name("api_workers") == "QUARRY_API_WORKERS"


def test_dotenv_is_read_and_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n\n"
        "QUARRY_PORT=9001\n"
        "export QUARRY_HOST='0.0.0.0'\n"
        "QUARRY_METRICS_TOKEN=scrape-me\n"
        'QUARRY_LOG_LEVEL="debug"\n'
        "DATABASE_URL=postgresql://from-dotenv/db\n"
    )
    s = load_settings(environ={"QUARRY_PORT": "9002", "REDIS_URL": "redis://env:6379/1"}, dotenv=dotenv)
    assert s.port == 9002  # environment beats .env
    assert s.host == "0.0.0.0" and s.log_level == "debug"  # quotes and `export` handled
    assert s.database_url == "postgresql://from-dotenv/db"
    assert s.redis_url == "redis://env:6379/1"


def test_empty_variable_means_unset_for_optional_values(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DATABASE_URL=postgresql://x/y\n")
    assert load_settings(environ={"DATABASE_URL": ""}, dotenv=dotenv).database_url is None


def test_unrelated_variables_are_ignored():
    s = load_settings(environ={"PATH": "/bin", "QUARRY_NOT_A_SETTING": "1"}, dotenv=None)
    assert isinstance(s, Settings)


def test_overrides_win(tmp_path):
    s = load_settings(environ={"QUARRY_PORT": "9002"}, dotenv=None, port=9003)
    assert s.port == 9003


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"QUARRY_API_WORKERS": "0"}, "QUARRY_API_WORKERS"),
        ({"QUARRY_PORT": "abc"}, "QUARRY_PORT"),
        ({"QUARRY_PORT": "70000"}, "QUARRY_PORT"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"QUARRY_LOG_LEVEL": "loud"}, "QUARRY_LOG_LEVEL"),
        ({"QUARRY_DB_POOL_MIN": "5", "QUARRY_DB_POOL_MAX": "2"}, "QUARRY_DB_POOL_MIN"),
        ({"QUARRY_DAGSTER": "maybe"}, "QUARRY_DAGSTER"),
        ({"QUARRY_TRUSTED_PROXIES": "10.0.0.0/8, not-an-ip"}, "QUARRY_TRUSTED_PROXIES"),
        ({"QUARRY_SECRET_KEY": "too-short"}, "QUARRY_SECRET_KEY"),
        ({"QUARRY_AUTH_FAILURES_PER_MINUTE": "-1"}, "QUARRY_AUTH_FAILURES_PER_MINUTE"),
    ],
)
def test_invalid_values_name_the_variable(env, name):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env, dotenv=None)
    assert name in str(info.value)


def test_invalid_url_error_does_not_echo_credentials():
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"DATABASE_URL": "mysql://user:hunter2@db/x"}, dotenv=None)
    assert "DATABASE_URL" in str(info.value) and "hunter2" not in str(info.value)


def test_invalid_value_in_dotenv_names_the_variable(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("QUARRY_API_WORKERS=0\n")
    with pytest.raises(SettingsError, match="QUARRY_API_WORKERS"):
        load_settings(environ={}, dotenv=dotenv)


SECRETS = {
    "DATABASE_URL": "postgresql://quarry:pg-hunter2@db.internal/quarry?sslmode=require",
    "DATABASE_REPLICA_URLS": "postgresql://quarry:replica-hunter2@r1/quarry,postgresql://q:replica2-pw@r2/quarry",
    "REDIS_URL": "redis://:redis-hunter2@cache:6379/0",
    "QUARRY_APP_DB_PASSWORD": "app-hunter2",
    "QUARRY_OPENAI_API_KEY": "sk-openai-hunter2",
    "QUARRY_LLM_API_KEY": "sk-llm-hunter2",
    "SENTRY_DSN": "https://dsnpublickey123@o1.ingest.sentry.io/42",
    "QUARRY_METRICS_TOKEN": "metrics-hunter2",
    "QUARRY_SECRET_KEY": "c2VjcmV0LWtleS1odW50ZXIyLXRoaXJ0eS10d28tYnk=",  # 32 bytes, url-safe base64
}
SECRET_VALUES = ["pg-hunter2", "replica-hunter2", "replica2-pw", "redis-hunter2", "app-hunter2",
                 "sk-openai-hunter2", "sk-llm-hunter2", "dsnpublickey123", "metrics-hunter2",
                 "c2VjcmV0LWtleS1odW50ZXIyLXRoaXJ0eS10d28tYnk="]


def test_repr_str_rich_and_logs_never_show_credentials(caplog):
    import logging

    from rich.pretty import pretty_repr

    s = load_settings(environ=SECRETS, dotenv=None)
    assert s.redis_url == SECRETS["REDIS_URL"] and s.llm_api_key == "sk-llm-hunter2"  # values themselves intact
    caplog.set_level(logging.INFO)
    logging.getLogger("quarry.test").info("settings: %s / %r", s, s)
    shown = [repr(s), str(s), f"{s}", pretty_repr(s), caplog.text]
    for text in shown:
        for secret in SECRET_VALUES:
            assert secret not in text, (secret, text)
    # Still useful: hosts, users and the other fields are there.
    assert "db.internal" in repr(s) and "quarry:********@" in repr(s) and "port=8000" in repr(s)
    assert "llm_api_key='********'" in repr(s) and "cache:6379" in repr(s)


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://u:p@ss@h/db", "postgresql://u:********@h/db"),  # an unescaped @ in the password
    ("see redis://:pw@h:1 and http://h/x?a=b@c", "see redis://:********@h:1 and http://h/x?a=b@c"),
    ("postgresql://h/db?user=u&password=pw&x=1", "postgresql://h/db?user=u&password=********&x=1"),
    ("https://token@github.com/x", "https://********@github.com/x"),
    ("no url at all", "no url at all"),
])
def test_mask_url_credentials(text, expected):
    from core.settings import mask_url_credentials

    assert mask_url_credentials(text) == expected


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com"])
def test_public_bind_needs_a_metrics_token(host):
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"QUARRY_HOST": host}, dotenv=None)
    assert "QUARRY_METRICS_TOKEN" in str(info.value) and "\n" not in str(info.value)
    assert load_settings(environ={"QUARRY_HOST": host, "QUARRY_METRICS_TOKEN": "t"}, dotenv=None).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_bind_may_leave_metrics_public(host):
    assert load_settings(environ={"QUARRY_HOST": host}, dotenv=None).metrics_token == ""
