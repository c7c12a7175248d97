from typing import Any

import pytest
from pydantic import ValidationError

from legator_probe.protocol.commands import (
    COMMAND_PAYLOAD_ADAPTER,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_S,
    FileReadSpec,
    FileWriteSpec,
    KubectlSpec,
    ProcessSpec,
    ShellCommand,
    ShellSpec,
    SystemdSpec,
)


def test_command_defaults_apply() -> None:
    payload = COMMAND_PAYLOAD_ADAPTER.validate_python(
        {
            "kind": "shell",
            "spec": {"script": "uptime"},
            "request_id": "r",
            "probe_id": "p",
            "nonce": "n",
            "expires_at": "2026-03-01T12:00:00Z",
        }
    )
    assert isinstance(payload, ShellCommand)
    assert (payload.timeout_s, payload.max_output_bytes, payload.stream) == (
        DEFAULT_TIMEOUT_S,
        DEFAULT_MAX_OUTPUT_BYTES,
        False,
    )
    assert payload.spec.env == {}


VALID_SPECS: list[Any] = [
    pytest.param(ShellSpec, {"argv": ["ls", "-l"], "cwd": "/tmp", "env": {"LANG": "C"}}, id="shell-argv"),
    pytest.param(ShellSpec, {"script": "uptime | cut -c1-10"}, id="shell-script"),
    pytest.param(FileReadSpec, {"path": "/var/log/syslog", "tail_lines": 50}, id="file-read-tail"),
    pytest.param(FileReadSpec, {"path": "/etc/hosts", "offset": 10, "max_bytes": 16 * 1024 * 1024}, id="file-read-cap"),
    pytest.param(
        FileWriteSpec, {"path": "/etc/motd", "content": "aGk=", "encoding": "base64", "mode": 0o644}, id="write"
    ),
    pytest.param(
        FileWriteSpec, {"path": "/etc/motd", "content": "hi", "owner": "root", "group": "adm"}, id="write-owner"
    ),
    pytest.param(ProcessSpec, {"action": "list", "name_filter": "nginx"}, id="process-list"),
    pytest.param(ProcessSpec, {"action": "inspect", "pid": 1}, id="process-inspect"),
    pytest.param(ProcessSpec, {"action": "signal", "pid": 42, "signal": "HUP"}, id="process-signal"),
    pytest.param(SystemdSpec, {"action": "list"}, id="systemd-list"),
    pytest.param(SystemdSpec, {"action": "journal", "unit": "getty@tty1.service", "lines": 20}, id="systemd-journal"),
    pytest.param(SystemdSpec, {"action": "restart", "unit": "dev-disk-by\\x2dlabel.device"}, id="systemd-escaped"),
    pytest.param(KubectlSpec, {"argv": ["get", "pods"], "namespace": "kube-system", "context": "prod"}, id="kubectl"),
]


@pytest.mark.parametrize(("spec", "data"), VALID_SPECS)
def test_valid_specs_are_accepted(spec: Any, data: dict[str, Any]) -> None:
    spec.model_validate(data)


INVALID_SPECS: list[Any] = [
    pytest.param(ShellSpec, {}, "exactly one of argv and script", id="shell-neither"),
    pytest.param(ShellSpec, {"argv": ["ls"], "script": "ls"}, "exactly one of argv and script", id="shell-both"),
    pytest.param(ShellSpec, {"argv": []}, "at least 1 item", id="shell-empty-argv"),
    pytest.param(ShellSpec, {"argv": [""]}, "argv\\[0\\] must name a program", id="shell-empty-program"),
    pytest.param(ShellSpec, {"script": "  "}, "script must not be blank", id="shell-blank-script"),
    pytest.param(ShellSpec, {"argv": ["ls", "a\x00b"]}, "NUL", id="shell-nul"),
    pytest.param(ShellSpec, {"script": "ls", "cwd": "tmp"}, "absolute path", id="shell-relative-cwd"),
    pytest.param(ShellSpec, {"script": "ls", "env": {"A=B": "x"}}, "pattern", id="shell-bad-env-name"),
    pytest.param(FileReadSpec, {"path": "etc/hosts"}, "absolute path", id="read-relative"),
    pytest.param(FileReadSpec, {"path": "/x", "max_bytes": 16 * 1024 * 1024 + 1}, "less than or equal", id="read-cap"),
    pytest.param(FileReadSpec, {"path": "/x", "offset": -1}, "greater than or equal", id="read-negative-offset"),
    pytest.param(FileReadSpec, {"path": "/x", "offset": 5, "tail_lines": 5}, "mutually exclusive", id="read-both"),
    pytest.param(FileWriteSpec, {"path": "/x", "content": "!!", "encoding": "base64"}, "not valid base64", id="b64"),
    pytest.param(FileWriteSpec, {"path": "/x", "content": "", "mode": 0o10000}, "less than or equal", id="mode"),
    pytest.param(FileWriteSpec, {"path": "/x", "content": "", "owner": "-rf"}, "pattern", id="owner"),
    pytest.param(ProcessSpec, {"action": "list", "pid": 3}, "pid is not allowed", id="process-list-pid"),
    pytest.param(ProcessSpec, {"action": "inspect"}, "pid is required", id="process-inspect-no-pid"),
    pytest.param(ProcessSpec, {"action": "signal", "pid": 3}, "signal is required", id="process-no-signal"),
    pytest.param(ProcessSpec, {"action": "inspect", "pid": 3, "signal": "KILL"}, "signal is required", id="stray-sig"),
    pytest.param(ProcessSpec, {"action": "signal", "pid": 3, "signal": "SEGV"}, "Input should be", id="bad-signal"),
    pytest.param(ProcessSpec, {"action": "signal", "pid": 0, "signal": "TERM"}, "greater than or equal", id="pid-0"),
    pytest.param(SystemdSpec, {"action": "start"}, "unit is required", id="systemd-no-unit"),
    pytest.param(SystemdSpec, {"action": "stop", "unit": "--now"}, "pattern", id="systemd-option-injection"),
    pytest.param(SystemdSpec, {"action": "stop", "unit": "a b"}, "pattern", id="systemd-space"),
    pytest.param(SystemdSpec, {"action": "journal", "unit": "x", "lines": 0}, "greater than or equal", id="lines"),
    pytest.param(KubectlSpec, {"argv": []}, "at least 1 item", id="kubectl-empty"),
    pytest.param(KubectlSpec, {"argv": [""]}, "at least 1", id="kubectl-empty-arg"),
    pytest.param(KubectlSpec, {"argv": ["get"], "namespace": "Kube_System"}, "pattern", id="kubectl-namespace"),
    pytest.param(KubectlSpec, {"argv": ["get"], "context": "--kubeconfig=/x"}, "pattern", id="kubectl-context"),
]


@pytest.mark.parametrize(("spec", "data", "match"), INVALID_SPECS)
def test_invalid_specs_are_refused(spec: Any, data: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        spec.model_validate(data)


def test_file_write_content_bytes_decodes_by_encoding() -> None:
    assert FileWriteSpec(path="/x", content="aGk=", encoding="base64").content_bytes() == b"hi"
    assert FileWriteSpec(path="/x", content="héllo").content_bytes() == "héllo".encode()


def shell_command(**overrides: Any) -> dict[str, Any]:
    base = {
        "kind": "shell",
        "spec": {"argv": ["true"]},
        "request_id": "r",
        "probe_id": "p",
        "nonce": "n",
        "expires_at": "2026-03-01T12:00:00Z",
    }
    return base | overrides


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"timeout_s": 0}, id="timeout-zero"),
        pytest.param({"timeout_s": 3600.5}, id="timeout-over-an-hour"),
        pytest.param({"max_output_bytes": 0}, id="output-cap-zero"),
        pytest.param({"max_output_bytes": 16 * 1024 * 1024 + 1}, id="output-cap-over-16-mib"),
        pytest.param({"kind": "reboot"}, id="unknown-kind"),
        pytest.param({"request_id": ""}, id="empty-request-id"),
    ],
)
def test_command_payload_limits_are_enforced(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        COMMAND_PAYLOAD_ADAPTER.validate_python(shell_command(**overrides))


def test_command_payload_accepts_the_limits_themselves() -> None:
    payload = COMMAND_PAYLOAD_ADAPTER.validate_python(
        shell_command(timeout_s=3600, max_output_bytes=16 * 1024 * 1024, stream=True)
    )
    assert (payload.timeout_s, payload.stream) == (3600.0, True)
