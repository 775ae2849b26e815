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
