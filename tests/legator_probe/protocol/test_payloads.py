from datetime import UTC, datetime
from typing import Literal

import pytest
from pydantic import ValidationError

from legator_probe.protocol.payloads import (
    PROTOCOL_VERSION,
    BackoffPayload,
    CommandResultPayload,
    DiskInfo,
    HeartbeatPayload,
    HelloPayload,
    InventoryPayload,
    KeyRotationPayload,
    PackageInfo,
    UpdatePayload,
    WelcomePayload,
    WireModel,
    inventory_digest,
)

KEY = "A" * 43 + "="  # standard base64 of 32 bytes


def test_key_rotation_requires_a_base64_raw_ed25519_key() -> None:
    base = {"probe_id": "p", "nonce": "n", "expires_at": "2026-03-01T12:00:00Z", "new_key_id": "k", "overlap_s": 0}
    KeyRotationPayload.model_validate({**base, "new_public_key": KEY})
    with pytest.raises(ValidationError, match="standard base64"):
        KeyRotationPayload.model_validate({**base, "new_public_key": "not base64!"})
    with pytest.raises(ValidationError, match="32-byte"):
        KeyRotationPayload.model_validate({**base, "new_public_key": "AAAA"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("sha256", "A" * 64, id="uppercase-hash"),
        pytest.param("sha256", "a" * 63, id="short-hash"),
        pytest.param("url", "file:///usr/bin/probe", id="non-http-url"),
    ],
)
def test_update_payload_checks_url_and_hash(field: str, value: str) -> None:
    data = {
        "probe_id": "p",
        "nonce": "n",
        "expires_at": "2026-03-01T12:00:00Z",
        "version": "1",
        "url": "https://x.test/p",
        "sha256": "a" * 64,
    }
    with pytest.raises(ValidationError, match=field):
        UpdatePayload.model_validate({**data, field: value})


def test_heartbeat_rejects_non_finite_and_negative_numbers() -> None:
    base = {"uptime_s": 1, "load": [0, 0, 0], "mem_total_bytes": 1, "mem_used_bytes": 1}
    base |= {"disk_total_bytes": 1, "disk_used_bytes": 1}
    HeartbeatPayload.model_validate(base)
    with pytest.raises(ValidationError):
        HeartbeatPayload.model_validate({**base, "uptime_s": float("inf")})
    with pytest.raises(ValidationError):
        HeartbeatPayload.model_validate({**base, "load": [0, -1, 0]})


class Tagged(WireModel):
    type: Literal["x"] = "x"
    name: str


class Untagged(WireModel):
    count: int = 0


def test_json_schema_marks_constant_discriminators_required() -> None:
    assert Tagged.model_json_schema()["required"] == ["type", "name"]
    assert "required" not in Untagged.model_json_schema()


def test_wire_models_are_immutable() -> None:
    payload = BackoffPayload(retry_after_s=1)
    with pytest.raises(ValidationError, match="frozen"):
        payload.retry_after_s = 2  # pyright: ignore[reportAttributeAccessIssue]  # the point of the test


def test_hello_defaults_announce_the_protocol_version() -> None:
    hello = HelloPayload(probe_id="p", version="1", hostname="h")
    assert (hello.capabilities, hello.protocol_version) == ([], PROTOCOL_VERSION)


def test_command_result_defaults_describe_an_empty_outcome() -> None:
    result = CommandResultPayload(request_id="r", status="refused", error_code="policy")
    assert (result.exit_code, result.stdout, result.stdout_bytes, result.truncated, result.data) == (
        None,
        "",
        0,
        False,
        None,
    )


def _inventory(**changes: object) -> InventoryPayload:
    base = InventoryPayload(
        hostname="web-1", os="linux", os_version="12", kernel="6.1.0", arch="x86_64", cpus=4,
        mem_total_bytes=8 * 2**30, disks=[DiskInfo(mount="/", fstype="ext4", total_bytes=100, used_bytes=40)],
        packages=[PackageInfo(name="openssl", version="3.0.11", manager="dpkg")],
        collected_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
    )  # fmt: skip
    return base.model_copy(update=changes)


def test_the_inventory_digest_ignores_when_it_was_collected_and_how_full_the_disks_are() -> None:
    digest = inventory_digest(_inventory())
    assert len(digest) == 64 and int(digest, 16) >= 0
    later = _inventory(
        collected_at=datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        disks=[DiskInfo(mount="/", fstype="ext4", total_bytes=100, used_bytes=95)],
    )
    assert inventory_digest(later) == digest
    # What the host is does count: a package upgrade, a new disk, another kernel.
    upgraded = _inventory(packages=[PackageInfo(name="openssl", version="3.0.13", manager="dpkg")])
    bigger = _inventory(disks=[DiskInfo(mount="/", fstype="ext4", total_bytes=200, used_bytes=40)])
    assert (
        len({digest, inventory_digest(upgraded), inventory_digest(bigger), inventory_digest(_inventory(kernel="6.2"))})
        == 4
    )


def test_a_welcome_names_a_digest_only_in_its_hex_form() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    digest = inventory_digest(_inventory())
    assert WelcomePayload(server_time=now, policy_level="observe", inventory_digest=digest).inventory_digest == digest
    assert WelcomePayload(server_time=now, policy_level="observe").inventory_digest is None
    with pytest.raises(ValidationError):
        WelcomePayload(server_time=now, policy_level="observe", inventory_digest="not-a-digest")
