from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from legator_probe.protocol.types import AbsolutePath, Identifier, PlainText, UtcDatetime


def test_utc_datetime_converts_offsets_to_utc() -> None:
    value = TypeAdapter(UtcDatetime).validate_python(datetime(2026, 1, 1, 3, tzinfo=timezone(timedelta(hours=3))))
    assert value == datetime(2026, 1, 1, tzinfo=UTC)
    assert value.tzinfo is UTC


def test_utc_datetime_refuses_naive_values() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        TypeAdapter(UtcDatetime).validate_python(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("alias", "value"),
    [
        pytest.param(PlainText, "a\x00b", id="plain-text-nul"),
        pytest.param(Identifier, "", id="identifier-empty"),
        pytest.param(Identifier, "x" * 129, id="identifier-long"),
        pytest.param(AbsolutePath, "relative/path", id="path-relative"),
        pytest.param(AbsolutePath, "/etc/\x00", id="path-nul"),
    ],
)
def test_constrained_strings_refuse_bad_values(alias: Any, value: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(alias).validate_python(value)


@pytest.mark.parametrize(
    ("alias", "value"),
    [
        pytest.param(PlainText, "héllo wörld", id="plain-text"),
        pytest.param(Identifier, "x" * 128, id="identifier-max"),
        pytest.param(AbsolutePath, "/var/log/../log/syslog", id="path"),
    ],
)
def test_constrained_strings_accept_good_values(alias: Any, value: str) -> None:
    assert TypeAdapter(alias).validate_python(value) == value
