"""The memoised redaction of audit data gives exactly what the probe protocol's sanitiser gives."""

import random
import secrets
import uuid
from typing import Any

import pytest

from legator_mcp.audit._redact import _INERT, redact_json, redact_text
from legator_probe.protocol.sanitize import sanitize, sanitize_mapping

KEY = "lgk_" + "0123456789abcdef" * 4

CASES: list[Any] = [
    {},
    {"password": "hunter2", "note": "nothing secret here", "empty": "", "none": None, "flag": True, "n": 3},
    {"detail": {"api_key": {"nested": "value"}, "token_count": 3, "url": "postgres://app:s3cret@db/x"}},
    {"rationale": ["classified shell as risk low", f"requested with {KEY}", "password=hunter2 in the line"]},
    {"list": [{"secret": "x"}, ["a", f"Authorization: Bearer {KEY}"], 1.5, None]},
    {"clientSecret": "", "client_secret": None, "DB_PASSWORD": False, "session_id": 12},
    {"long": "x" * 5000 + f" password={KEY}", "command": "mysql --password=hunter2 -e 'select 1'"},
]


@pytest.mark.parametrize("value", [pytest.param(case, id=f"case-{n}") for n, case in enumerate(CASES)])
def test_redact_json_matches_sanitize_mapping_and_stays_the_same_when_repeated(value: dict[str, Any]) -> None:
    expected = sanitize_mapping(value)
    assert redact_json(value) == expected
    assert redact_json(value) == expected  # served from the memo the second time


@pytest.mark.parametrize(
    "text", ["", "plain words", f"key {KEY}", "password=hunter2", "y" * 3000 + " token=abcdefghijklmnop1234"]
)
def test_redact_text_matches_sanitize(text: str) -> None:
    assert redact_text(text) == sanitize(text) == redact_text(text)


PREFIXES = ("cmd", "prb", "fan", "req", "job", "jobexec")


def test_minted_identifiers_skip_the_sanitiser_only_because_it_would_leave_them_alone() -> None:
    rng = random.Random(7)
    samples = [
        *(rng.randbytes(rng.randint(1, 64)).hex()[: rng.randint(1, 128)] for _ in range(400)),
        *(f"{prefix}-{secrets.token_hex(rng.randint(4, 32))}" for prefix in PREFIXES for _ in range(80)),
        *(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(200)),
    ]  # fmt: skip
    for text in samples:
        assert redact_text(text) == sanitize(text) == text
    # Anything else still goes through the sanitiser: a prefixed secret is not an identifier.
    assert redact_text(KEY) == sanitize(KEY) != KEY
    assert not _INERT.fullmatch("password-deadbeef")  # only our own prefixes take the shortcut
    assert redact_text("cmd-" + "0" * 20 + " password=hunter2") == sanitize("cmd-" + "0" * 20 + " password=hunter2")
