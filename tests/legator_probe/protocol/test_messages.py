import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from legator_probe.protocol.commands import ProcessSpec
from legator_probe.protocol.errors import MalformedMessage
from legator_probe.protocol.messages import (
    AGENT_MESSAGE_TYPES,
    GATEWAY_MESSAGE_TYPES,
    MESSAGE_TYPES,
    SIGNED_MESSAGE_CLASSES,
    SIGNED_TYPES,
    BackoffMessage,
    CommandMessage,
    UnknownMessage,
    dump_message,
    new_message_id,
    parse_message,
    wire_json_schema,
)

TS = '"2026-03-01T12:00:00Z"'
SIGNED = '"probe_id":"prb-1","nonce":"n-1","expires_at":"2026-03-01T12:05:00Z"'
KEY = "A" * 43 + "="  # standard base64 of 32 bytes

FRAMES = [
    pytest.param(
        "hello",
        '{"probe_id":"prb-1","version":"0.1.0","hostname":"web-1","capabilities":["shell","file_read"]}',
        id="hello",
    ),
    pytest.param(
        "welcome",
        '{"heartbeat_interval_s":30,"server_time":"2026-03-01T12:00:00Z","policy_level":"observe"}',
        id="welcome",
    ),
    pytest.param(
        "heartbeat",
        '{"uptime_s":12.5,"load":[0.1,0.2,0.3],"mem_total_bytes":8,"mem_used_bytes":4,'
        '"disk_total_bytes":100,"disk_used_bytes":50,"running_commands":1}',
        id="heartbeat",
    ),
    pytest.param(
        "inventory",
        '{"hostname":"web-1","os":"linux","os_version":"Debian 12","kernel":"6.1.0","arch":"amd64","cpus":4,'
        '"mem_total_bytes":8,"disks":[{"mount":"/","fstype":"ext4","total_bytes":100,"used_bytes":50}],'
        '"interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff","addresses":["10.0.0.2/24"]}],'
        '"packages":[{"name":"bash","version":"5.2","manager":"apt"}],'
        '"services":[{"name":"nginx","state":"active","sub_state":"running"}],'
        '"users":[{"name":"root","uid":0,"shell":"/bin/bash"}],"collected_at":"2026-03-01T12:00:00Z"}',
        id="inventory",
    ),
    pytest.param(
        "command",
        '{"kind":"shell","spec":{"argv":["uptime"]},"request_id":"req-1",' + SIGNED + "}",
        id="command",
    ),
    pytest.param("output_chunk", '{"request_id":"req-1","seq":0,"stream":"stdout","data":"up 3 days\\n"}', id="chunk"),
    pytest.param(
        "command_result",
        '{"request_id":"req-1","status":"ok","exit_code":0,"stdout":"x","stdout_bytes":1,"duration_ms":5,'
        '"data":{"processes":[{"pid":1,"name":"init"}]}}',
        id="result",
    ),
    pytest.param("cancel", '{"request_id":"req-1",' + SIGNED + "}", id="cancel"),
    pytest.param(
        "policy_update",
        '{"policy_id":"pol-1","level":"diagnose","allow_patterns":["uptime"],"path_deny":["/etc/shadow"],'
        '"version":3,' + SIGNED + "}",
        id="policy_update",
    ),
    pytest.param(
        "key_rotation",
        '{"new_key_id":"g1-abc","new_public_key":"' + KEY + '","overlap_s":600,' + SIGNED + "}",
        id="key_rotation",
    ),
    pytest.param(
        "update",
        '{"version":"0.2.0","url":"https://example.test/probe","sha256":"' + "a" * 64 + '",' + SIGNED + "}",
        id="update",
    ),
    pytest.param("rejection", '{"ref_id":"env-9","reason":"expired","detail":"too late"}', id="rejection"),
    pytest.param("error", '{"code":"malformed_message","message":"bad","ref_id":"env-9"}', id="error"),
    pytest.param("backoff", '{"retry_after_s":12.5}', id="backoff"),
]


def frame(message_type: str, payload: str, *, sig: str | None = None) -> str:
    tail = "" if sig is None else f',"sig":"{sig}"'
    return f'{{"id":"env-1","type":"{message_type}","ts":{TS},"payload":{payload}{tail}}}'


@pytest.mark.parametrize(("message_type", "payload"), FRAMES)
def test_every_message_type_round_trips_through_json(message_type: str, payload: str) -> None:
    message = parse_message(frame(message_type, payload))
    assert not isinstance(message, UnknownMessage)
    assert message.type == message_type
    again = parse_message(dump_message(message))
    assert again == message
    assert not isinstance(again, UnknownMessage)
    assert dump_message(again) == dump_message(message)


def test_round_trip_table_covers_every_message_type() -> None:
    assert {p.values[0] for p in FRAMES} == MESSAGE_TYPES


def test_direction_tables_partition_the_types_except_error() -> None:
    assert AGENT_MESSAGE_TYPES | GATEWAY_MESSAGE_TYPES == MESSAGE_TYPES
    assert AGENT_MESSAGE_TYPES & GATEWAY_MESSAGE_TYPES == {"error"}
    assert SIGNED_TYPES <= GATEWAY_MESSAGE_TYPES
    assert {cls.model_fields["type"].default for cls in SIGNED_MESSAGE_CLASSES} == SIGNED_TYPES


def test_dump_is_compact_and_omits_an_unset_signature() -> None:
    message = parse_message(frame("backoff", '{"retry_after_s":1}'))
    assert isinstance(message, BackoffMessage)
    expected = '{"id":"env-1","ts":"2026-03-01T12:00:00Z","type":"backoff","payload":{"retry_after_s":1.0}}'
    assert dump_message(message) == expected


def test_dump_keeps_a_set_signature() -> None:
    message = parse_message(frame("backoff", '{"retry_after_s":1}', sig="g0-k.sig"))
    assert isinstance(message, BackoffMessage)
    assert json.loads(dump_message(message))["sig"] == "g0-k.sig"


def test_timestamps_are_normalised_to_utc() -> None:
    message = parse_message(frame("backoff", '{"retry_after_s":1}').replace(TS, '"2026-03-01T14:00:00+02:00"'))
    assert not isinstance(message, UnknownMessage)
    assert message.ts == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert '"ts":"2026-03-01T12:00:00Z"' in dump_message(message)


def test_unknown_types_parse_as_unknown_message() -> None:
    message = parse_message('{"id":"env-7","type":"telemetry_v2","payload":{"x":1}}')
    assert message == UnknownMessage(type="telemetry_v2", id="env-7")


def test_unknown_fields_are_ignored() -> None:
    message = parse_message(frame("backoff", '{"retry_after_s":1,"jitter":true}'))
    assert message.type == "backoff"


@pytest.mark.parametrize(
    ("text", "ref_id", "message_type"),
    [
        pytest.param("not json", None, None, id="not-json"),
        pytest.param('["hello"]', None, None, id="not-an-object"),
        pytest.param('{"id":"env-1","payload":{}}', "env-1", None, id="missing-type"),
        pytest.param('{"id":"env-1","type":7}', "env-1", None, id="non-string-type"),
        pytest.param(frame("backoff", '{"retry_after_s":0}'), "env-1", "backoff", id="payload-out-of-range"),
        pytest.param(frame("backoff", "{}").replace(TS, '"2026-03-01T12:00:00"'), "env-1", "backoff", id="naive-ts"),
        pytest.param('{"id":"","type":"backoff"}', None, "backoff", id="empty-id-unusable-as-ref"),
        pytest.param('{"id":' + '"' + "x" * 200 + '","type":"backoff"}', None, "backoff", id="long-id"),
        pytest.param(frame("heartbeat", '{"uptime_s":NaN}'), "env-1", "heartbeat", id="nan-is-not-finite"),
    ],
)
def test_malformed_frames_raise_with_whatever_could_be_read(
    text: str, ref_id: str | None, message_type: str | None
) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(text)
    assert info.value.code == "malformed_message"
    assert info.value.ref_id == ref_id
    assert info.value.message_type == message_type


def test_malformed_report_names_fields_and_counts_the_rest() -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(frame("heartbeat", "{}"))
    assert "payload.uptime_s: Field required" in info.value.message
    assert info.value.message.endswith("and 3 more")


def test_malformed_report_explains_a_missing_type() -> None:
    with pytest.raises(MalformedMessage, match="not an envelope"):
        parse_message("[]")


def test_malformed_report_does_not_echo_input_values() -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(frame("error", '{"code":"","message":"s3cr3t-token"}'))
    assert "s3cr3t" not in info.value.message


def test_new_message_ids_are_distinct_uuids() -> None:
    first, second = new_message_id(), new_message_id()
    assert first != second
    assert uuid.UUID(first).version == 4


def test_command_spec_must_match_its_kind() -> None:
    text = frame("command", '{"kind":"file_read","spec":{"argv":["ls"]},"request_id":"r",' + SIGNED + "}")
    with pytest.raises(MalformedMessage, match="payload.file_read.spec.path"):
        parse_message(text)


@pytest.mark.parametrize(
    "timeout_s", [pytest.param(0, id="zero"), pytest.param(3600.5, id="over-an-hour"), pytest.param(-1, id="negative")]
)
def test_command_timeout_is_bounded(timeout_s: float) -> None:
    text = frame(
        "command", f'{{"kind":"shell","spec":{{"argv":["ls"]}},"request_id":"r","timeout_s":{timeout_s},{SIGNED}}}'
    )
    with pytest.raises(MalformedMessage, match="timeout_s"):
        parse_message(text)


def test_command_message_parses_into_the_kind_specific_variant() -> None:
    message = parse_message(
        frame("command", '{"kind":"process","spec":{"action":"list"},"request_id":"r",' + SIGNED + "}")
    )
    assert isinstance(message, CommandMessage)
    assert isinstance(message.payload.spec, ProcessSpec)


def test_schema_is_a_discriminated_union_over_every_message_type() -> None:
    document = wire_json_schema()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["discriminator"]["propertyName"] == "type"
    assert set(document["discriminator"]["mapping"]) == MESSAGE_TYPES
    assert len(document["oneOf"]) == len(MESSAGE_TYPES)


def test_schema_requires_the_discriminators_on_the_wire() -> None:
    definitions: dict[str, Any] = wire_json_schema()["$defs"]
    assert definitions["HeartbeatMessage"]["required"] == ["type", "id", "ts", "payload"]
    assert definitions["ShellCommand"]["required"][0] == "kind"
    assert "required" not in definitions["ShellSpec"]


def test_signed_payloads_require_probe_nonce_and_expiry() -> None:
    document = wire_json_schema()
    for message_type in SIGNED_TYPES:
        ref = document["discriminator"]["mapping"][message_type].rsplit("/", 1)[1]
        payload = document["$defs"][ref]["properties"]["payload"]
        targets = [item["$ref"] for item in payload.get("oneOf", [payload])]
        for target in targets:
            required = document["$defs"][target.rsplit("/", 1)[1]]["required"]
            assert {"probe_id", "nonce", "expires_at"} <= set(required), target
