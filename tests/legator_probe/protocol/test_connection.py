import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from legator_probe.protocol.connection import (
    DEFAULT_MAX_STRIKES,
    Ignored,
    ProbeProtocol,
    ProtocolViolation,
    Rejected,
    Side,
    State,
)
from legator_probe.protocol.errors import (
    InvalidState,
    MalformedMessage,
    MessageTooLarge,
    OutOfOrderMessage,
    SignatureRejected,
    UnexpectedMessage,
)
from legator_probe.protocol.messages import (
    SIGNED_MESSAGE_CLASSES,
    BackoffMessage,
    CancelMessage,
    CommandMessage,
    CommandResultMessage,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    InventoryMessage,
    OutputChunkMessage,
    PolicyUpdateMessage,
    RejectionMessage,
    UpdateMessage,
    WelcomeMessage,
    dump_message,
    parse_message,
)
from legator_probe.protocol.payloads import (
    BackoffPayload,
    CancelPayload,
    CommandResultPayload,
    ErrorPayload,
    HeartbeatPayload,
    HelloPayload,
    InventoryPayload,
    OutputChunkPayload,
    RejectionPayload,
    WelcomePayload,
)
from legator_probe.protocol.signing import TrustedKey, Verifier, derive_probe_keypair, sign_envelope

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MASTER = bytes(range(32))
PROBE = "prb-1"
KEY_ID, PRIVATE_KEY = derive_probe_keypair(MASTER, PROBE, 0)

TS = '"ts":"2026-03-01T12:00:00Z"'
HELLO = '{"id":"h-1","type":"hello",' + TS + ',"payload":{"probe_id":"prb-1","version":"0.1.0","hostname":"web-1"}}'
WELCOME = (
    '{"id":"w-1","type":"welcome",' + TS + ',"payload":{"server_time":"2026-03-01T12:00:00Z","policy_level":"observe"}}'
)
HEARTBEAT = (
    '{"id":"hb-1","type":"heartbeat",' + TS + ',"payload":{"uptime_s":5,"load":[0,0,0],"mem_total_bytes":1,'
    '"mem_used_bytes":1,"disk_total_bytes":1,"disk_used_bytes":1}}'
)
INVENTORY = (
    '{"id":"inv-1","type":"inventory",' + TS + ',"payload":{"hostname":"web-1","os":"linux","os_version":"12",'
    '"kernel":"6.1","arch":"arm64","cpus":2,"mem_total_bytes":1,"collected_at":"2026-03-01T12:00:00Z"}}'
)
CHUNK = (
    '{"id":"oc-1","type":"output_chunk",' + TS + ',"payload":{"request_id":"r-1","seq":1,"stream":"stderr","data":"x"}}'
)
RESULT = '{"id":"cr-1","type":"command_result",' + TS + ',"payload":{"request_id":"r-1","status":"timeout"}}'
REJECTION = '{"id":"rj-1","type":"rejection",' + TS + ',"payload":{"ref_id":"c-1","reason":"policy"}}'
ERROR = '{"id":"e-1","type":"error",' + TS + ',"payload":{"code":"internal","message":"oops"}}'
BACKOFF = '{"id":"b-1","type":"backoff",' + TS + ',"payload":{"retry_after_s":30}}'
UNKNOWN = '{"id":"u-1","type":"telemetry_v2",' + TS + ',"payload":{}}'
SIGNED_FIELDS = '"probe_id":"prb-1","nonce":"n-1","expires_at":"2026-03-01T12:05:00Z"'
COMMAND_UNSIGNED = (
    '{"id":"c-1","type":"command",' + TS + ',"payload":{"kind":"shell","request_id":"r-1",'
    '"spec":{"argv":["uptime"]},' + SIGNED_FIELDS + "}}"
)
POLICY_UNSIGNED = (
    '{"id":"p-1","type":"policy_update",'
    + TS
    + ',"payload":{"policy_id":"pol","level":"diagnose","version":2,'
    + SIGNED_FIELDS
    + "}}"
)
UPDATE_UNSIGNED = (
    '{"id":"u-2","type":"update",'
    + TS
    + ',"payload":{"version":"2","url":"https://x.test/p","sha256":"'
    + "0" * 64
    + '",'
    + SIGNED_FIELDS
    + "}}"
)


def sign(text: str) -> str:
    """Sign a literal signed-type frame the way the gateway would."""
    message = parse_message(text)
    assert isinstance(message, SIGNED_MESSAGE_CLASSES)
    return dump_message(sign_envelope(message, key_id=KEY_ID, private_key=PRIVATE_KEY))


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"id-{next(numbers)}"


def make_agent(**kwargs: Any) -> ProbeProtocol:
    verifier = Verifier(probe_id=PROBE, now=lambda: NOW, keys=[TrustedKey(KEY_ID, PRIVATE_KEY.public_key())])
    return ProbeProtocol(Side.AGENT, verifier=verifier, now=lambda: NOW, new_id=counter(), **kwargs)


def make_gateway(**kwargs: Any) -> ProbeProtocol:
    return ProbeProtocol(Side.GATEWAY, now=lambda: NOW, new_id=counter(), **kwargs)


HELLO_PAYLOAD = HelloPayload(probe_id=PROBE, version="0.1.0", hostname="web-1", capabilities=["shell"])
WELCOME_PAYLOAD = WelcomePayload(server_time=NOW, policy_level="diagnose")


def registered_gateway(**kwargs: Any) -> ProbeProtocol:
    gateway = make_gateway(**kwargs)
    gateway.receive_text(HELLO)
    gateway.send_welcome(WELCOME_PAYLOAD)
    gateway.events_received()
    gateway.data_to_send()
    return gateway


def registered_agent(**kwargs: Any) -> ProbeProtocol:
    agent = make_agent(**kwargs)
    agent.send_hello(HELLO_PAYLOAD)
    agent.data_to_send()
    agent.receive_text(WELCOME)
    agent.events_received()
    return agent


def sent(protocol: ProbeProtocol) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in protocol.data_to_send()]


def only_violation(protocol: ProbeProtocol) -> ProtocolViolation:
    events = protocol.events_received()
    assert len(events) == 1
    assert isinstance(events[0], ProtocolViolation)
    return events[0]


# --- handshake --------------------------------------------------------------------------------


def test_agent_sends_hello_as_its_first_frame() -> None:
    agent = make_agent()
    message = agent.send_hello(HELLO_PAYLOAD)
    assert agent.data_to_send() == [
        '{"id":"id-1","ts":"2026-03-01T12:00:00Z","type":"hello","payload":{"probe_id":"prb-1","version":"0.1.0",'
        '"hostname":"web-1","capabilities":["shell"],"protocol_version":1,"trusted_key_ids":null}}'
    ]
    assert message.id == "id-1"
    assert agent.hello == HELLO_PAYLOAD
    assert agent.state is State.CONNECTING


def test_gateway_reports_hello_and_registers_once_it_sends_welcome() -> None:
    gateway = make_gateway()
    gateway.receive_text(HELLO)
    [event] = gateway.events_received()
    assert isinstance(event, HelloMessage)
    assert gateway.hello == event.payload
    assert gateway.state is State.CONNECTING
    assert gateway.data_to_send() == []

    welcome = gateway.send_welcome(WELCOME_PAYLOAD)
    assert gateway.state is State.REGISTERED
    assert gateway.welcome == WELCOME_PAYLOAD
    assert sent(gateway) == [json.loads(dump_message(welcome))]


def test_agent_registers_when_welcome_arrives() -> None:
    agent = make_agent()
    agent.send_hello(HELLO_PAYLOAD)
    agent.receive_text(WELCOME)
    [event] = agent.events_received()
    assert isinstance(event, WelcomeMessage)
    assert agent.welcome == event.payload
    assert agent.state is State.REGISTERED


def test_both_sides_complete_the_handshake_over_their_own_frames() -> None:
    agent, gateway = make_agent(), make_gateway()
    agent.send_hello(HELLO_PAYLOAD)
    for frame in agent.data_to_send():
        gateway.receive_text(frame)
    gateway.send_welcome(WELCOME_PAYLOAD)
    for frame in gateway.data_to_send():
        agent.receive_text(frame)
    agent.send_heartbeat(
        HeartbeatPayload(
            uptime_s=1, load=(0.5, 0.4, 0.3), mem_total_bytes=8, mem_used_bytes=2, disk_total_bytes=9, disk_used_bytes=3
        )
    )
    for frame in agent.data_to_send():
        gateway.receive_text(frame)
    assert (agent.state, gateway.state) == (State.REGISTERED, State.REGISTERED)
    assert [type(event) for event in gateway.events_received()] == [HelloMessage, HeartbeatMessage]


# --- traffic after the handshake --------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(HEARTBEAT, HeartbeatMessage, id="heartbeat"),
        pytest.param(INVENTORY, InventoryMessage, id="inventory"),
        pytest.param(CHUNK, OutputChunkMessage, id="output_chunk"),
        pytest.param(RESULT, CommandResultMessage, id="command_result"),
        pytest.param(REJECTION, RejectionMessage, id="rejection"),
        pytest.param(ERROR, ErrorMessage, id="error"),
    ],
)
def test_gateway_turns_agent_frames_into_events(frame: str, expected: type) -> None:
    gateway = registered_gateway()
    gateway.receive_text(frame)
    [event] = gateway.events_received()
    assert isinstance(event, expected)
    assert gateway.data_to_send() == []
    assert gateway.strikes == 0


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(sign(COMMAND_UNSIGNED), CommandMessage, id="command"),
        pytest.param(sign(POLICY_UNSIGNED), PolicyUpdateMessage, id="policy_update"),
        pytest.param(sign(UPDATE_UNSIGNED), UpdateMessage, id="update"),
        pytest.param(BACKOFF, BackoffMessage, id="backoff"),
        pytest.param(ERROR, ErrorMessage, id="error"),
    ],
)
def test_agent_turns_verified_gateway_frames_into_events(frame: str, expected: type) -> None:
    agent = registered_agent()
    agent.receive_text(frame)
    [event] = agent.events_received()
    assert isinstance(event, expected)
    assert agent.data_to_send() == []


def test_agent_rejects_an_unsigned_instruction_and_reports_it() -> None:
    agent = registered_agent()
    agent.receive_text(COMMAND_UNSIGNED)
    [event] = agent.events_received()
    assert isinstance(event, Rejected)
    assert isinstance(event.message, CommandMessage)
    assert event.error.reason == "malformed"
    [frame] = sent(agent)
    assert frame["type"] == "rejection"
    assert frame["payload"] == {"ref_id": "c-1", "reason": "malformed", "detail": "missing signature"}
    assert (agent.strikes, agent.state) == (0, State.REGISTERED)


def test_agent_rejects_a_replayed_instruction() -> None:
    agent = registered_agent()
    frame = sign(COMMAND_UNSIGNED)
    agent.receive_text(frame)
    agent.receive_text(frame)
    events = agent.events_received()
    assert isinstance(events[0], CommandMessage)
    assert isinstance(events[1], Rejected)
    assert events[1].error.reason == "replayed"
    assert [f["payload"]["reason"] for f in sent(agent)] == ["replayed"]


def test_agent_rejects_an_instruction_for_another_probe() -> None:
    agent = registered_agent()
    agent.receive_text(sign(COMMAND_UNSIGNED.replace('"prb-1"', '"prb-2"')))
    [event] = agent.events_received()
    assert isinstance(event, Rejected)
    assert isinstance(event.error, SignatureRejected)
    assert event.error.reason == "wrong_probe"


# --- violations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "frame", "error", "ref_id"),
    [
        pytest.param(make_gateway, HEARTBEAT, OutOfOrderMessage, "hb-1", id="gateway-heartbeat-before-hello"),
        pytest.param(registered_gateway, HELLO, OutOfOrderMessage, "h-1", id="gateway-duplicate-hello"),
        pytest.param(registered_gateway, sign(COMMAND_UNSIGNED), UnexpectedMessage, "c-1", id="gateway-gets-command"),
        pytest.param(registered_gateway, WELCOME, UnexpectedMessage, "w-1", id="gateway-gets-welcome"),
        pytest.param(registered_gateway, "{not json", MalformedMessage, None, id="gateway-bad-json"),
        pytest.param(
            registered_gateway,
            HEARTBEAT.replace('"uptime_s":5', '"uptime_s":-5'),
            MalformedMessage,
            "hb-1",
            id="gateway-schema-failure",
        ),
        pytest.param(make_agent, WELCOME, OutOfOrderMessage, "w-1", id="agent-welcome-before-hello"),
        pytest.param(registered_agent, WELCOME, OutOfOrderMessage, "w-1", id="agent-duplicate-welcome"),
        pytest.param(registered_agent, HEARTBEAT, UnexpectedMessage, "hb-1", id="agent-gets-heartbeat"),
        pytest.param(registered_agent, HELLO, UnexpectedMessage, "h-1", id="agent-gets-hello"),
        pytest.param(
            registered_agent,
            '{"type":"command","payload":{}}',
            MalformedMessage,
            None,
            id="agent-malformed-command-without-id",
        ),
    ],
)
def test_violations_queue_an_error_frame_and_count_a_strike(
    setup: Callable[[], ProbeProtocol], frame: str, error: type, ref_id: str | None
) -> None:
    protocol = setup()
    protocol.receive_text(frame)
    violation = only_violation(protocol)
    assert isinstance(violation.error, error)
    assert violation.strikes == protocol.strikes == 1
    [reply] = sent(protocol)
    assert reply["type"] == "error"
    assert reply["payload"]["code"] == violation.error.code
    assert reply["payload"]["ref_id"] == ref_id
    assert protocol.state < State.CLOSING
    assert protocol.protocol_exc is None


def test_agent_answers_a_malformed_signed_instruction_with_a_rejection() -> None:
    agent = registered_agent()
    agent.receive_text(COMMAND_UNSIGNED.replace('"argv":["uptime"]', '"argv":[]'))
    violation = only_violation(agent)
    assert isinstance(violation.error, MalformedMessage)
    [reply] = sent(agent)
    assert reply["type"] == "rejection"
    assert reply["payload"]["ref_id"] == "c-1"
    assert reply["payload"]["reason"] == "malformed"


def test_agent_refuses_instructions_before_welcome() -> None:
    agent = make_agent()
    agent.send_hello(HELLO_PAYLOAD)
    agent.data_to_send()
    agent.receive_text(sign(COMMAND_UNSIGNED))
    assert isinstance(only_violation(agent).error, OutOfOrderMessage)


@pytest.mark.parametrize(
    ("setup", "frame", "expected"),
    [
        pytest.param(make_agent, BACKOFF, BackoffMessage, id="agent-backoff"),
        pytest.param(make_agent, ERROR, ErrorMessage, id="agent-error"),
        pytest.param(make_gateway, ERROR, ErrorMessage, id="gateway-error"),
    ],
)
def test_error_and_backoff_are_accepted_before_the_handshake(
    setup: Callable[[], ProbeProtocol], frame: str, expected: type
) -> None:
    protocol = setup()
    protocol.receive_text(frame)
    [event] = protocol.events_received()
    assert isinstance(event, expected)
    assert protocol.strikes == 0


@pytest.mark.parametrize("setup", [pytest.param(make_gateway, id="gateway"), pytest.param(make_agent, id="agent")])
def test_unknown_message_types_are_ignored_without_a_strike(setup: Callable[[], ProbeProtocol]) -> None:
    protocol = setup()
    protocol.receive_text(UNKNOWN)
    assert protocol.events_received() == [Ignored("telemetry_v2", "u-1")]
    assert protocol.data_to_send() == []
    assert protocol.strikes == 0


def test_repeated_violations_close_the_connection_with_1008() -> None:
    gateway = make_gateway(max_strikes=3)
    for _ in range(3):
        gateway.receive_text("garbage")
    events = gateway.events_received()
    assert [e.strikes for e in events if isinstance(e, ProtocolViolation)] == [1, 2, 3]
    assert len(gateway.data_to_send()) == 3
    assert gateway.state is State.CLOSING
    assert gateway.close_code == 1008
    assert isinstance(gateway.protocol_exc, MalformedMessage)

    gateway.receive_text(HELLO)
    assert gateway.events_received() == []
    assert gateway.data_to_send() == []


def test_default_strike_limit_is_five() -> None:
    gateway = make_gateway()
    for _ in range(DEFAULT_MAX_STRIKES - 1):
        gateway.receive_text("[]")
    assert gateway.state is State.CONNECTING
    gateway.receive_text("[]")
    assert gateway.state is State.CLOSING


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" * 65, id="ascii-over-limit"),
        pytest.param("é" * 40, id="multibyte-over-limit"),
    ],
)
def test_an_oversized_frame_closes_at_once_with_1009(text: str) -> None:
    gateway = make_gateway(max_frame_bytes=64)
    gateway.receive_text(text)
    violation = only_violation(gateway)
    assert isinstance(violation.error, MessageTooLarge)
    [reply] = sent(gateway)
    assert reply["payload"]["code"] == "message_too_large"
    assert gateway.state is State.CLOSING
    assert gateway.close_code == 1009
    assert gateway.protocol_exc is violation.error


def test_a_multibyte_frame_within_the_byte_limit_is_parsed() -> None:
    gateway = make_gateway(max_frame_bytes=64)
    gateway.receive_text("é" * 20)
    assert isinstance(only_violation(gateway).error, MalformedMessage)
    assert gateway.state is State.CONNECTING


# --- sending ----------------------------------------------------------------------------------


def test_agent_senders_queue_their_messages() -> None:
    agent = registered_agent()
    agent.send_inventory(
        InventoryPayload(
            hostname="h",
            os="linux",
            os_version="12",
            kernel="6",
            arch="x86_64",
            cpus=1,
            mem_total_bytes=1,
            collected_at=NOW,
        )
    )
    agent.send_output_chunk(OutputChunkPayload(request_id="r", seq=0, stream="stdout", data="a"))
    agent.send_result(CommandResultPayload(request_id="r", status="ok", exit_code=0))
    agent.send_rejection(RejectionPayload(ref_id="c-9", reason="policy", detail="level"))
    agent.send_error(ErrorPayload(code="internal", message="disk full"))
    assert [frame["type"] for frame in sent(agent)] == [
        "inventory",
        "output_chunk",
        "command_result",
        "rejection",
        "error",
    ]


def test_gateway_sends_signed_instructions() -> None:
    gateway = registered_gateway()
    command = CommandMessage.model_validate_json(sign(COMMAND_UNSIGNED))
    gateway.send_command(command)
    cancel = CancelMessage(
        id="x-1",
        ts=NOW,
        payload=CancelPayload(probe_id=PROBE, nonce="n-2", expires_at=NOW + timedelta(minutes=1), request_id="r-1"),
    )
    gateway.send_signed(sign_envelope(cancel, key_id=KEY_ID, private_key=PRIVATE_KEY))
    frames = sent(gateway)
    assert [frame["type"] for frame in frames] == ["command", "cancel"]
    assert all(frame["sig"].startswith(KEY_ID + ".") for frame in frames)

    agent = registered_agent()
    for frame in frames:
        agent.receive_text(json.dumps(frame))
    assert [type(event) for event in agent.events_received()] == [CommandMessage, CancelMessage]


def test_gateway_refuses_to_send_an_unsigned_instruction() -> None:
    gateway = registered_gateway()
    with pytest.raises(ValueError, match="unsigned"):
        gateway.send_command(CommandMessage.model_validate_json(COMMAND_UNSIGNED))
    assert gateway.data_to_send() == []


def test_gateway_may_send_backoff_and_close_before_the_handshake() -> None:
    gateway = make_gateway()
    gateway.send_backoff(BackoffPayload(retry_after_s=60))
    gateway.close(4000)
    assert [frame["type"] for frame in sent(gateway)] == ["backoff"]
    assert (gateway.state, gateway.close_code) == (State.CLOSING, 4000)


def hello(p: ProbeProtocol) -> None:
    p.send_hello(HELLO_PAYLOAD)


def welcome(p: ProbeProtocol) -> None:
    p.send_welcome(WELCOME_PAYLOAD)


def heartbeat(p: ProbeProtocol) -> None:
    p.send_heartbeat(
        HeartbeatPayload(
            uptime_s=1, load=(0, 0, 0), mem_total_bytes=1, mem_used_bytes=1, disk_total_bytes=1, disk_used_bytes=1
        )
    )


def command(p: ProbeProtocol) -> None:
    p.send_command(CommandMessage.model_validate_json(sign(COMMAND_UNSIGNED)))


def backoff(p: ProbeProtocol) -> None:
    p.send_backoff(BackoffPayload(retry_after_s=1))


def error(p: ProbeProtocol) -> None:
    p.send_error(ErrorPayload(code="x", message="y"))


def closed(setup: Callable[[], ProbeProtocol]) -> Callable[[], ProbeProtocol]:
    def build() -> ProbeProtocol:
        protocol = setup()
        protocol.close()
        return protocol

    return build


@pytest.mark.parametrize(
    ("setup", "action"),
    [
        pytest.param(make_gateway, hello, id="gateway-sends-hello"),
        pytest.param(make_agent, welcome, id="agent-sends-welcome"),
        pytest.param(make_agent, backoff, id="agent-sends-backoff"),
        pytest.param(make_gateway, heartbeat, id="gateway-sends-heartbeat"),
        pytest.param(registered_agent, hello, id="agent-sends-hello-twice"),
        pytest.param(make_agent, heartbeat, id="agent-heartbeat-before-welcome"),
        pytest.param(make_gateway, welcome, id="gateway-welcome-before-hello"),
        pytest.param(registered_gateway, welcome, id="gateway-welcome-twice"),
        pytest.param(make_gateway, command, id="gateway-command-before-welcome"),
        pytest.param(closed(registered_agent), error, id="agent-error-after-close"),
        pytest.param(closed(registered_gateway), command, id="gateway-command-after-close"),
    ],
)
def test_sending_out_of_turn_raises_invalid_state(
    setup: Callable[[], ProbeProtocol], action: Callable[[ProbeProtocol], None]
) -> None:
    protocol = setup()
    with pytest.raises(InvalidState) as info:
        action(protocol)
    assert info.value.code == "invalid_state"
    assert protocol.data_to_send() == []


# --- closing ----------------------------------------------------------------------------------


def test_close_is_idempotent_and_keeps_the_first_code() -> None:
    agent = registered_agent()
    agent.close()
    agent.close(4001)
    assert (agent.state, agent.close_code, agent.protocol_exc) == (State.CLOSING, 1000, None)
    agent.receive_text(BACKOFF)
    assert agent.events_received() == []


def test_receive_close_drops_queued_frames_and_ignores_later_input() -> None:
    agent = registered_agent()
    agent.send_error(ErrorPayload(code="x", message="y"))
    agent.receive_close()
    assert agent.state is State.CLOSED
    assert agent.data_to_send() == []
    agent.receive_text(ERROR)
    assert agent.events_received() == []
    agent.close()
    assert agent.state is State.CLOSED


# --- construction -----------------------------------------------------------------------------


def test_the_agent_side_requires_a_verifier() -> None:
    with pytest.raises(ValueError, match="verifier"):
        ProbeProtocol(Side.AGENT)


def test_the_gateway_side_takes_no_verifier() -> None:
    verifier = Verifier(probe_id=PROBE, now=lambda: NOW)
    with pytest.raises(ValueError, match="verifier"):
        ProbeProtocol(Side.GATEWAY, verifier=verifier)


@pytest.mark.parametrize(
    ("max_strikes", "max_frame_bytes"),
    [pytest.param(0, 1024, id="strikes"), pytest.param(5, 0, id="frame-bytes")],
)
def test_limits_must_be_positive(max_strikes: int, max_frame_bytes: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ProbeProtocol(Side.GATEWAY, max_strikes=max_strikes, max_frame_bytes=max_frame_bytes)


def test_default_clock_and_ids_are_real() -> None:
    gateway = ProbeProtocol(Side.GATEWAY)
    message = gateway.send_error(ErrorPayload(code="x", message="y"))
    assert message.ts.tzinfo is UTC
    assert len(message.id) == 36
