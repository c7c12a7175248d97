"""Parse human durations such as ``90s``, ``15m``, ``720h`` or ``30d``."""

import re
from datetime import timedelta

__all__ = ["parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float) -> timedelta:
    """Turn ``"1h30m"``, ``"30d"`` or a number of seconds into a positive :class:`timedelta`.

    Raises:
        ValueError: If the text is not a sequence of ``<number><unit>`` parts or the result is not positive.
    """
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if text.replace(".", "", 1).isdigit():
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"not a duration: {value!r} (use forms like 90s, 15m, 12h, 30d)")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return timedelta(seconds=seconds)
