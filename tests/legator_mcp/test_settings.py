"""Settings: defaults, environment, and clear failures on bad values."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from legator_mcp.settings import Settings, parse_listen_addr


def test_defaults_put_the_database_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # pyright: ignore[reportCallIssue]
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'legator.db'}"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.auth_enabled is True
    assert settings.max_body_bytes == 4 * 1024 * 1024


def test_environment_variables_use_the_legator_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEGATOR_LISTEN_ADDR", "[::1]:9000")
    monkeypatch.setenv("LEGATOR_DATABASE_URL", "postgresql://u@db/legator")
    monkeypatch.setenv("LEGATOR_AUTH_ENABLED", "false")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # pyright: ignore[reportCallIssue]
    assert (settings.host, settings.port) == ("::1", 9000)
    assert settings.effective_database_url == "postgresql+asyncpg://u@db/legator"
    assert settings.auth_enabled is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("listen_addr", "8080", id="no-host"),
        pytest.param("listen_addr", "127.0.0.1:99999", id="port-out-of-range"),
        pytest.param("listen_addr", "127.0.0.1:http", id="port-not-number"),
        pytest.param("database_url", "mysql://x", id="unsupported-database"),
        pytest.param("max_body_bytes", 0, id="zero-body-limit"),
        pytest.param("log_level", "LOUD", id="unknown-log-level"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, **{field: value})  # pyright: ignore[reportCallIssue]
    assert info.value.errors()[0]["loc"] == (field,)


def test_listen_addr_parser_understands_ipv6_brackets() -> None:
    assert parse_listen_addr("[::]:80") == ("::", 80)
    assert parse_listen_addr("0.0.0.0:0") == ("0.0.0.0", 0)
