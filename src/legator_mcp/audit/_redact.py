"""Redaction of audit text and JSON detail with a memo: the same strings recur across a batch of events.

A fan-out's audit events repeat most of their strings (the policy rationale, the command, the status words), and
:func:`~legator_probe.protocol.sanitize.sanitize` runs a hundred-odd patterns over each. :func:`redact_json`
gives exactly what :func:`~legator_probe.protocol.sanitize.sanitize_mapping` gives for JSON data, but remembers
the redaction of short strings and the verdict on keys, so a batch pays for each distinct string once.
"""

import re
from functools import lru_cache
from typing import Any, cast

from legator_probe.protocol.sanitize import REDACTED, is_secret_key, sanitize

__all__ = ["redact_item", "redact_json", "redact_text"]

_MEMO_MAX_CHARS = 1024
"""Longer strings (command output, file previews) are rarely repeated: they are redacted without the memo."""


_INERT = re.compile(
    r"(?:(?:cmd|fan|req|prb|job|jobexec)-)?[0-9a-f]{1,128}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
"""Identifiers we mint (``cmd-…``, ``prb-…``, ``job-…``, digests, UUIDs): lower-case hex behind one of our
prefixes, which no rule of :func:`sanitize` rewrites (a test holds it to that). They are unique per event, so
the memo cannot help."""


@lru_cache(maxsize=8192)
def _redact_short(text: str) -> str:
    return sanitize(text)


_secret_key = lru_cache(maxsize=1024)(is_secret_key)


def redact_text(text: str) -> str:
    """``sanitize(text)``, remembered for short strings."""
    if _INERT.fullmatch(text):
        return text
    return _redact_short(text) if len(text) <= _MEMO_MAX_CHARS else sanitize(text)


def _item(key: object, item: Any) -> Any:
    keep = item is None or isinstance(item, bool) or (isinstance(item, str) and not item)
    if isinstance(key, str) and not keep and _secret_key(key):
        return REDACTED
    if isinstance(item, str):
        return redact_text(item)
    if isinstance(item, dict):
        return redact_json(cast(dict[str, Any], item))
    if isinstance(item, list):
        return [_item(None, element) for element in cast(list[Any], item)]
    return item


def redact_item(key: str, item: Any) -> Any:
    """What :func:`redact_json` makes of ``item`` found under ``key`` (plain JSON data)."""
    return _item(key, item)


def redact_json(value: dict[str, Any]) -> dict[str, Any]:
    """``sanitize_mapping(value)`` for plain JSON data (dicts, lists, strings, numbers, booleans, null)."""
    return {key: _item(key, item) for key, item in value.items()}
