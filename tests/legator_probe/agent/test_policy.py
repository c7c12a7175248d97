"""The probe's own classifier and policy: levels, path rules, patterns, protected files."""

from pathlib import Path
from typing import Any

import pytest
from tests.legator_probe.agent._support import signed_fields

from legator_probe.agent._state import protected_paths
from legator_probe.agent.policy import LocalPolicy, classify, command_line, glob_matches
from legator_probe.agent.settings import PolicyConfig
from legator_probe.protocol.commands import COMMAND_PAYLOAD_ADAPTER, CommandPayload
from legator_probe.protocol.types import CapabilityLevel


def _command(kind: str, **spec: Any) -> CommandPayload:
    return COMMAND_PAYLOAD_ADAPTER.validate_python({"kind": kind, "spec": spec, "request_id": "r1", **signed_fields()})


@pytest.mark.parametrize(
    ("spec", "level"),
    [
        pytest.param({"argv": ["uptime"]}, "observe", id="uptime"),
        pytest.param({"argv": ["/usr/bin/df", "-h"]}, "observe", id="df-by-path"),
        pytest.param({"argv": ["cat", "/var/log/syslog"]}, "observe", id="cat"),
        pytest.param({"script": "ps aux | grep nginx | head -5"}, "observe", id="pipeline"),
        pytest.param({"script": "cat /var/log/x 2>/dev/null || true"}, "observe", id="dev-null"),
        pytest.param({"script": "ps aux 2>&1 | awk '{print $2}'"}, "observe", id="awk-single-quoted-dollar"),
        pytest.param({"argv": ["ip", "addr"]}, "observe", id="ip-addr"),
        pytest.param({"argv": ["journalctl", "-u", "nginx", "-n", "50"]}, "diagnose", id="journalctl"),
        pytest.param({"argv": ["systemctl", "status", "nginx"]}, "diagnose", id="systemctl-status"),
        pytest.param({"argv": ["curl", "-fsSL", "https://example.com/health"]}, "diagnose", id="curl-get"),
        pytest.param({"argv": ["kubectl", "get", "pods", "-n", "web"]}, "diagnose", id="kubectl-get"),
        pytest.param({"argv": ["systemctl", "restart", "nginx"]}, "remediate", id="systemctl-restart"),
        pytest.param({"argv": ["rm", "-rf", "/tmp/x"]}, "remediate", id="rm"),
        pytest.param({"argv": ["sh", "-c", "ls"]}, "remediate", id="nested-shell"),
        pytest.param({"argv": ["/tmp/cat", "x"]}, "remediate", id="program-outside-system-dirs"),
        pytest.param({"argv": ["env", "rm", "-rf", "/"]}, "remediate", id="env-runs-a-program"),
        pytest.param({"argv": ["find", "/", "-delete"]}, "remediate", id="find-delete"),
        pytest.param({"argv": ["curl", "-o", "/etc/x", "http://e"]}, "remediate", id="curl-output-file"),
        pytest.param({"argv": ["curl", "file:///etc/shadow"]}, "remediate", id="curl-file-url"),
        pytest.param({"argv": ["date", "-s", "2020-01-01"]}, "remediate", id="date-set"),
        pytest.param({"argv": ["sort", "-o", "/etc/passwd", "x"]}, "remediate", id="sort-output"),
        pytest.param({"argv": ["ls"], "env": {"LD_PRELOAD": "/tmp/x.so"}}, "remediate", id="env-override"),
        pytest.param({"argv": ["ls"], "env": {"LANG": "C.UTF-8"}}, "observe", id="safe-env"),
        pytest.param({"script": "echo x > /etc/motd"}, "remediate", id="redirect-to-file"),
        pytest.param({"script": "ls\nrm -rf /tmp/x"}, "remediate", id="second-line"),
        pytest.param({"script": "ls # comment\nrm -rf /x"}, "remediate", id="comment-hides-line"),
        pytest.param({"script": "echo $(rm -rf /x)"}, "remediate", id="command-substitution"),
        pytest.param({"script": 'cat "$HOME/.ssh/id_rsa"'}, "remediate", id="variable"),
        pytest.param({"script": "sleep 100 &"}, "remediate", id="background"),
        pytest.param({"script": "cat <<EOF\nx\nEOF"}, "remediate", id="here-doc"),
        pytest.param({"script": "FOO=1 ls"}, "remediate", id="assignment"),
        pytest.param({"script": "ls 'unbalanced"}, "remediate", id="unbalanced-quote"),
        pytest.param({"script": "awk 'BEGIN{system(\"rm -rf /x\")}'"}, "remediate", id="awk-system"),
        pytest.param({"argv": ["awk", "-f", "prog.awk"]}, "remediate", id="awk-program-file"),
        pytest.param({"argv": ["curl", "-X", "POST", "http://e"]}, "remediate", id="curl-post"),
        pytest.param({"argv": ["curl", "-X", "HEAD", "-m", "5", "http://e"]}, "diagnose", id="curl-head"),
        pytest.param({"argv": ["curl", "-H", "@/etc/secret", "http://e"]}, "remediate", id="curl-header-file"),
        pytest.param({"argv": ["curl", "--max-time=3", "--silent", "http://e"]}, "diagnose", id="curl-long-opts"),
        pytest.param({"argv": ["openssl", "s_client", "-connect", "e:443"]}, "diagnose", id="openssl-s-client"),
        pytest.param({"argv": ["openssl", "x509", "-in", "/etc/ssl/certs/a.pem"]}, "diagnose", id="openssl-x509"),
        pytest.param({"argv": ["openssl", "genrsa", "-out", "k"]}, "remediate", id="openssl-genrsa"),
        pytest.param({"argv": ["openssl", "x509", "-out", "k"]}, "remediate", id="openssl-writes"),
        pytest.param({"argv": ["docker", "ps", "-a"]}, "diagnose", id="docker-ps"),
        pytest.param({"argv": ["docker", "container", "ls"]}, "diagnose", id="docker-container-ls"),
        pytest.param({"argv": ["docker", "stats"]}, "remediate", id="docker-stats-streams"),
        pytest.param({"argv": ["docker", "rm", "x"]}, "remediate", id="docker-rm"),
        pytest.param({"argv": ["tcpdump", "-i", "eth0", "-c", "10"]}, "diagnose", id="tcpdump"),
        pytest.param({"argv": ["tcpdump", "-w", "/tmp/x.pcap"]}, "remediate", id="tcpdump-write"),
        pytest.param({"argv": ["dmesg", "-T"]}, "diagnose", id="dmesg"),
        pytest.param({"argv": ["dmesg", "-C"]}, "remediate", id="dmesg-clear"),
        pytest.param({"argv": ["hostname", "-f"]}, "observe", id="hostname"),
        pytest.param({"argv": ["hostname", "new"]}, "remediate", id="hostname-set"),
        pytest.param({"argv": ["sysctl", "net.ipv4.ip_forward"]}, "observe", id="sysctl-read"),
        pytest.param({"argv": ["sysctl", "-w", "x=1"]}, "remediate", id="sysctl-write"),
        pytest.param({"argv": ["ip", "route", "add", "default"]}, "remediate", id="ip-route-add"),
        pytest.param({"argv": ["timedatectl", "status"]}, "observe", id="timedatectl"),
        pytest.param({"argv": ["timedatectl", "set-time", "x"]}, "remediate", id="timedatectl-set"),
        pytest.param({"argv": ["uniq", "in", "out"]}, "remediate", id="uniq-output"),
        pytest.param({"argv": ["mount", "/dev/sdb1", "/mnt"]}, "remediate", id="mount-device"),
        pytest.param({"argv": ["mount"]}, "observe", id="mount-list"),
        pytest.param({"argv": ["env"]}, "observe", id="env-alone"),
        pytest.param({"script": "cd - && ls"}, "remediate", id="cd-dash"),
        pytest.param({"script": "date +%s"}, "observe", id="date-format"),
        pytest.param({"argv": ["journalctl", "--vacuum-time=1d"]}, "remediate", id="journal-vacuum"),
        pytest.param({"argv": ["kubectl", "cluster-info", "dump"]}, "remediate", id="kubectl-dump"),
        pytest.param({"argv": ["kubectl", "get", "pods", "--log-file=/tmp/x"]}, "remediate", id="kubectl-log-file"),
        pytest.param({"argv": ["kubectl", "config", "get-contexts"]}, "diagnose", id="kubectl-config"),
        pytest.param({"argv": ["kubectl", "config", "set-context", "x"]}, "remediate", id="kubectl-config-set"),
        pytest.param({"script": "ls \r x"}, "remediate", id="control-character"),
        pytest.param({"script": "ls > /dev/null 2>&1"}, "observe", id="dev-null-and-dup"),
        pytest.param({"script": "ls >& out"}, "remediate", id="dup-into-file"),
        pytest.param({"script": "(ls; pwd)"}, "observe", id="subshell"),
        pytest.param({"script": "grep -q x /etc/hosts && echo yes"}, "observe", id="and-list"),
    ],
)
def test_shell_commands_are_classified_conservatively(spec: dict[str, Any], level: CapabilityLevel) -> None:
    assert classify(_command("shell", **spec)).level == level


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        pytest.param(["get", "pods", "-A"], "diagnose", id="get"),
        pytest.param(["--context", "prod", "-n", "web", "logs", "deploy/api"], "diagnose", id="flags-first"),
        pytest.param(["rollout", "status", "deploy/api"], "diagnose", id="rollout-status"),
        pytest.param(["rollout", "restart", "deploy/api"], "remediate", id="rollout-restart"),
        pytest.param(["get", "secret", "db", "-o", "yaml"], "remediate", id="secrets"),
        pytest.param(["config", "view", "--raw"], "remediate", id="config-raw"),
        pytest.param(["delete", "pod", "x"], "remediate", id="delete"),
        pytest.param(["exec", "-it", "x", "--", "sh"], "remediate", id="exec"),
        pytest.param(["-n", "get", "delete", "pod"], "remediate", id="namespace-named-get"),
    ],
)
def test_kubectl_read_verbs_are_diagnose_and_the_rest_remediate(argv: list[str], level: CapabilityLevel) -> None:
    assert classify(_command("kubectl", argv=argv)).level == level


@pytest.mark.parametrize(
    ("kind", "spec", "level"),
    [
        pytest.param("file_read", {"path": "/etc/hosts"}, "observe", id="file-read"),
        pytest.param("file_write", {"path": "/etc/hosts", "content": ""}, "remediate", id="file-write"),
        pytest.param("process", {"action": "list"}, "observe", id="process-list"),
        pytest.param("process", {"action": "signal", "pid": 5, "signal": "TERM"}, "remediate", id="signal"),
        pytest.param("systemd", {"action": "journal", "unit": "x"}, "diagnose", id="systemd-journal"),
        pytest.param("systemd", {"action": "stop", "unit": "x"}, "remediate", id="systemd-stop"),
    ],
)
def test_typed_kinds_need_their_documented_level(kind: str, spec: dict[str, Any], level: CapabilityLevel) -> None:
    assert classify(_command(kind, **spec)).level == level


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        pytest.param("/etc/shadow", "/etc/shadow", True, id="literal"),
        pytest.param("/etc/ssl", "/etc/ssl/private/key.pem", True, id="literal-covers-below"),
        pytest.param("/etc/ssl", "/etc/sslx", False, id="literal-is-not-a-prefix-match"),
        pytest.param("/home/*/.ssh/id_*", "/home/ann/.ssh/id_ed25519", True, id="star"),
        pytest.param("/home/*/.ssh/id_*", "/home/ann/x/.ssh/id_rsa", False, id="star-stays-in-segment"),
        pytest.param("/var/**/secret", "/var/lib/app/secret", True, id="double-star"),
        pytest.param("/var/**/secret", "/var/secret", True, id="double-star-zero-dirs"),
        pytest.param("/srv/**", "/srv", True, id="trailing-double-star-covers-the-dir"),
        pytest.param("/", "/anything/at/all", True, id="root"),
    ],
)
def test_path_globs(pattern: str, path: str, matches: bool) -> None:
    assert glob_matches(pattern, path) is matches


def _decide(policy: LocalPolicy, kind: str, **spec: Any) -> tuple[bool, str]:
    decision = policy.evaluate(_command(kind, **spec))
    return decision.allowed, decision.rule


def test_the_level_bounds_what_runs() -> None:
    observe = LocalPolicy(PolicyConfig(level="observe"))
    assert _decide(observe, "shell", argv=["uptime"]) == (True, "allowed")
    assert _decide(observe, "systemd", action="status", unit="x") == (False, "level")
    assert _decide(observe, "file_write", path="/tmp/x", content="") == (False, "level")


def test_secret_files_are_unreadable_below_remediate() -> None:
    diagnose = LocalPolicy(PolicyConfig(level="diagnose"))
    remediate = LocalPolicy(PolicyConfig(level="remediate"))
    assert _decide(diagnose, "file_read", path="/etc/shadow") == (False, "secret_path")
    assert _decide(diagnose, "file_read", path="/etc/../etc/shadow") == (False, "secret_path")
    assert _decide(diagnose, "shell", argv=["cat", "/etc/shadow"]) == (False, "secret_path")
    assert _decide(diagnose, "shell", script="cd /etc && cat shadow") == (False, "secret_path")
    assert _decide(diagnose, "shell", script="cat /etc/sha*") == (False, "secret_path")
    assert _decide(diagnose, "shell", argv=["grep", "-r", "root", "/etc"]) == (False, "secret_path")
    assert _decide(diagnose, "shell", argv=["getent", "shadow"]) == (False, "secret_path")
    assert _decide(diagnose, "shell", argv=["grep", "root", "/etc/passwd"]) == (True, "allowed")
    assert _decide(remediate, "file_read", path="/etc/shadow") == (True, "allowed")


def test_a_symlink_to_a_denied_path_is_denied(tmp_path: Path) -> None:
    secret_dir = tmp_path / "vault"
    secret_dir.mkdir()
    (secret_dir / "key").write_text("k", encoding="utf-8")
    (tmp_path / "innocent").symlink_to(secret_dir / "key")
    policy = LocalPolicy(PolicyConfig(level="remediate", path_deny=[str(secret_dir)]))
    assert _decide(policy, "file_read", path=str(tmp_path / "innocent")) == (False, "path_deny")


def test_path_allow_limits_typed_file_commands() -> None:
    policy = LocalPolicy(PolicyConfig(level="remediate", path_allow=["/etc/nginx/**"]))
    assert _decide(policy, "file_write", path="/etc/nginx/conf.d/a.conf", content="")[0] is True
    assert _decide(policy, "file_write", path="/etc/passwd", content="") == (False, "path_allow")


def test_system_trees_are_never_written() -> None:
    policy = LocalPolicy(PolicyConfig(level="remediate"))
    assert _decide(policy, "file_write", path="/proc/sysrq-trigger", content="b") == (False, "path_deny")


def test_block_and_allow_patterns_match_the_command_line() -> None:
    policy = LocalPolicy(PolicyConfig(level="remediate", block_patterns=["rm -rf /*", "systemctl stop"]))
    assert _decide(policy, "shell", argv=["rm", "-rf", "/var"]) == (False, "block_pattern")
    assert _decide(policy, "systemd", action="stop", unit="nginx") == (False, "block_pattern")
    assert _decide(policy, "systemd", action="restart", unit="nginx") == (True, "allowed")
    allow_only = LocalPolicy(PolicyConfig(level="remediate", allow_patterns=["systemctl *"]))
    assert _decide(allow_only, "shell", argv=["reboot"]) == (False, "allow_pattern")
    assert command_line(_command("kubectl", argv=["get", "pods"])) == "kubectl get pods"


def test_the_probe_own_files_are_protected_at_every_level(tmp_path: Path) -> None:
    config = tmp_path / "probe.json"
    policy = LocalPolicy(PolicyConfig(level="remediate"), protected_paths=protected_paths(config))
    assert _decide(policy, "file_read", path=str(config)) == (False, "protected_path")
    assert _decide(policy, "file_write", path=str(tmp_path / "probe.state.json"), content="") == (
        False,
        "protected_path",
    )
    assert _decide(policy, "shell", argv=["cat", str(config)]) == (False, "protected_path")
    assert _decide(policy, "shell", argv=["ls", str(tmp_path)]) == (True, "allowed")
