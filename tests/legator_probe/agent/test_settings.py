"""Config file paths, atomic private writes, loading errors, URLs."""

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.legator_probe.agent._support import FakeGateway

from legator_probe.agent.cli import main
from legator_probe.agent.settings import (
    DEFAULT_ROOT_CONFIG,
    ConfigError,
    ProbeSettings,
    default_config_path,
    is_loopback_url,
    load_config,
    resolve_config_path,
    save_config,
    websocket_url,
)


def test_the_default_config_path_depends_on_root(tmp_path: Path) -> None:
    assert default_config_path(euid=0) == DEFAULT_ROOT_CONFIG
    assert default_config_path(euid=1000, home=tmp_path) == tmp_path / ".config" / "legator" / "probe.json"


def test_the_option_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGATOR_PROBE_CONFIG", str(tmp_path / "env.json"))
    settings = ProbeSettings.from_env()
    assert resolve_config_path(tmp_path / "opt.json", settings) == tmp_path / "opt.json"
    assert resolve_config_path(None, settings) == tmp_path / "env.json"


def test_legator_hostname_overrides_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "from-the-shell")
    assert ProbeSettings.from_env().hostname is None
    monkeypatch.setenv("LEGATOR_HOSTNAME", "node-7")
    assert ProbeSettings.from_env().hostname == "node-7"


def test_settings_come_from_legator_probe_variables_and_bad_values_name_the_field() -> None:
    settings = ProbeSettings.from_env(
        {
            "legator_probe_open_timeout_s": "2.5", "LEGATOR_PROBE_COMPRESSION": "yes",
            "LEGATOR_PROBE_PING_INTERVAL_S": "none", "LEGATOR_PROBE_LOG_LEVEL": "DEBUG",
            "LEGATOR_PROBE_CONFIG": "/etc/x.json", "LEGATOR_PROBE_HOSTNAME": "node-1", "LEGATOR_PROBE_UNKNOWN": "1",
            "PATH": "/bin",
        }
    )  # fmt: skip
    assert settings.open_timeout_s == 2.5 and settings.compression is True and settings.ping_interval_s is None
    assert settings.log_level == "DEBUG" and settings.config == Path("/etc/x.json") and settings.hostname == "node-1"
    assert ProbeSettings.from_env({}) == ProbeSettings()
    assert ProbeSettings.from_env({"LEGATOR_HOSTNAME": "a", "LEGATOR_PROBE_HOSTNAME": "b"}).hostname == "a"
    for name, value in [("OPEN_TIMEOUT_S", "0"), ("CLOSE_TIMEOUT_S", "none"), ("LOG_LEVEL", "loud")]:
        with pytest.raises(ValidationError) as info:
            ProbeSettings.from_env({f"LEGATOR_PROBE_{name}": value})
        assert info.value.errors()[0]["loc"] == (name.lower(),)


def test_a_bad_setting_stops_the_cli_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEGATOR_PROBE_BACKOFF_CAP_S", "-1")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("legator-probe: error: invalid setting LEGATOR_PROBE_BACKOFF_CAP_S:") and err.count("\n") == 1


def test_save_is_atomic_and_private_and_round_trips(tmp_path: Path) -> None:
    gateway = FakeGateway()
    gateway.url = "https://cp.example:8443/"
    config = gateway.config(tags=["a"])
    path = tmp_path / "new-dir" / "probe.json"
    save_config(path, config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = load_config(path)
    assert loaded == config and loaded.server_url == "https://cp.example:8443"
    save_config(path, loaded.model_copy(update={"tags": ["b"]}))
    assert load_config(path).tags == ["b"]
    assert [p.name for p in path.parent.iterdir()] == ["probe.json"]
    assert "lpc_test" not in repr(loaded)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("[", "not valid JSON", id="json"),
        pytest.param(
            '{"server_url": "https://x", "probe_id": "p", "credential": "c", "signing_keys": []}', "signing_keys"
        ),
        pytest.param(
            '{"server_url": "https://x", "probe_id": "p", "credential": "c", '
            '"signing_keys": [{"key_id": "k", "public_key": "bm90IGEga2V5"}]}',
            "signing_keys.0.public_key",
            id="bad-key",
        ),
    ],
)
def test_a_malformed_config_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "probe.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_websocket_urls_and_loopback_detection() -> None:
    assert websocket_url("https://cp.example/base/") == "wss://cp.example/base/ws/probe"
    assert websocket_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/ws/probe"
    assert is_loopback_url("http://[::1]:80") and is_loopback_url("http://localhost:1")
    assert not is_loopback_url("http://10.0.0.1") and not is_loopback_url("http://example.com")
