from typing import Literal

import pytest
from pydantic import ValidationError

from legator_probe.protocol.payloads import (
    PROTOCOL_VERSION,
    BackoffPayload,
    CommandResultPayload,
    HeartbeatPayload,
    HelloPayload,
    KeyRotationPayload,
    UpdatePayload,
    WireModel,
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
