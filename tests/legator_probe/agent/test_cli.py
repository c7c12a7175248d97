"""``legator-probe`` commands: init against a local registration server, status, service install, errors."""

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.legator_probe.agent._support import MASTER

from legator_probe.agent.cli import main
from legator_probe.agent.settings import load_config
from legator_probe.agent.status import ConnectionStatus, status_path, write_status
from legator_probe.protocol.signing import derive_probe_keypair, encode_public_key

TOKEN = "prb_one-time-token-123456"
KEY_ID, PRIVATE_KEY = derive_probe_keypair(MASTER, "prb-cli", 0)


class _Registry(BaseHTTPRequestHandler):
    """``POST /api/v1/register`` as the control plane answers it."""

    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Registry.requests.append(body)
        if self.path != "/api/v1/register":
            self._reply(404, {"error": {"code": "not_found", "message": "no route"}})
        elif body.get("token") != TOKEN:
            self._reply(401, {"error": {"code": "invalid_token", "message": "invalid or expired token"}})
        else:
            self._reply(
                201,
                {
                    "probe_id": "prb-cli",
                    "credential": "lpc_credential-abcdef0123456789",
                    "signing_key": {
                        "key_id": KEY_ID,
                        "algorithm": "ed25519",
                        "public_key": encode_public_key(PRIVATE_KEY.public_key()),
                    },
                    "policy": {
                        "policy_id": "default-observe",
                        "level": "observe",
                        "path_deny": ["/srv/x"],
                        "version": 1,
                    },
                    "heartbeat_interval_s": 15,
                },
            )

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    _Registry.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_init_registers_and_writes_a_private_config(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "legator" / "probe.json"
    argv = ["init", "--server", registry, "--token", TOKEN, "--tags", "web, eu ,web", "--config", str(path)]
    assert main([*argv, "--hostname", "host-a"]) == 0
    config = load_config(path)
    assert (config.probe_id, config.server_url, config.policy.level, config.tags) == (
        "prb-cli",
        registry,
        "observe",
        ["web", "eu"],
    )
    assert config.credential.get_secret_value() == "lpc_credential-abcdef0123456789"
    assert config.signing_keys[0].key_id == KEY_ID and config.heartbeat_interval_s == 15
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    request = _Registry.requests[0]
    assert (request["hostname"], request["tags"], request["os"]) == ("host-a", ["web", "eu"], "linux")
    out = capsys.readouterr()
    assert "prb-cli" in out.out and TOKEN not in out.out + out.err and "lpc_" not in out.out + out.err


def test_init_refuses_to_overwrite_without_force(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "probe.json"
    argv = ["init", "--server", registry, "--token", TOKEN, "--config", str(path)]
    assert main(argv) == 0
    before = path.read_text(encoding="utf-8")
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == before
    assert main([*argv, "--force"]) == 0


def test_init_with_a_bad_token_fails_without_echoing_it(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "probe.json"
    assert main(["init", "--server", registry, "--token", "prb_wrong-token-999", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "refused the token" in err and "prb_wrong" not in err and len(err.strip().splitlines()) == 1
    assert not path.exists()


def test_init_warns_about_plain_http_to_a_remote_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["init", "--server", f"http://0.0.0.0:{port}", "--token", TOKEN, "--config", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert "unencrypted" in err and "cannot reach" in err
    assert code == 1


def _registered(registry: str, tmp_path: Path) -> Path:
    path = tmp_path / "probe.json"
    assert main(["init", "--server", registry, "--token", TOKEN, "--config", str(path)]) == 0
    return path


def test_status_prints_identity_policy_and_the_last_connection(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _registered(registry, tmp_path)
    write_status(
        status_path(path), ConnectionStatus(outcome="auth_failed", detail="refused", updated_at=datetime.now(UTC))
    )
    capsys.readouterr()
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prb-cli" in out and "level observe" in out and "auth_failed" in out and registry in out
    assert main(["status", "--config", str(path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["connection"]["outcome"] == "auth_failed" and "credential" not in json.dumps(document)


def test_service_install_writes_a_hardened_unit_for_an_observe_probe(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _registered(registry, tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    assert main(["service", "install", "--config", str(path), "--unit-dir", str(units), "--no-enable"]) == 0
    unit = (units / "legator-probe.service").read_text(encoding="utf-8")
    assert f"run --config {path}" in unit and "Restart=always" in unit and "KillMode=mixed" in unit
    assert "ProtectSystem=strict" in unit and f"ReadWritePaths={tmp_path}" in unit
    assert stat.S_IMODE((units / "legator-probe.service").stat().st_mode) == 0o644
    assert "--no-enable" in capsys.readouterr().out
    argv = ["service", "install", "--config", str(path), "--unit-dir", str(units), "--no-enable", "--profile"]
    assert main([*argv, "remediate"]) == 0
    unit = (units / "legator-probe.service").read_text(encoding="utf-8")
    assert "ProtectSystem" not in unit and "NoNewPrivileges" not in unit and "KillMode=mixed" in unit


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('{"server_url": "ftp://x", "probe_id": "p"}', id="invalid-fields"),
    ],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_malformed_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, command: str
) -> None:
    path = tmp_path / "probe.json"
    path.write_text(content, encoding="utf-8")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_a_missing_config_tells_how_to_create_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(tmp_path / "none.json")]) == 2
    assert "legator-probe init" in capsys.readouterr().err


def test_the_config_path_comes_from_the_environment(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "env-probe.json"
    monkeypatch.setenv("LEGATOR_PROBE_CONFIG", str(path))
    monkeypatch.setenv("LEGATOR_PROBE_TOKEN", TOKEN)
    assert main(["init", "--server", registry]) == 0
    assert path.exists() and os.stat(path).st_mode & 0o077 == 0
    capsys.readouterr()
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("legator-probe ")


def test_an_invalid_environment_setting_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEGATOR_PROBE_DRAIN_TIMEOUT_S", "soon")
    assert main(["version"]) == 2
    assert "LEGATOR_PROBE_DRAIN_TIMEOUT_S" in capsys.readouterr().err
