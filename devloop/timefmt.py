"""The one parser of the timestamps devloop reads (Kubernetes' and a registry's RFC 3339 times)."""

from __future__ import annotations

import re
from datetime import datetime

_FRACTION = re.compile(r"(\.\d{6})\d+")  # nanoseconds: Python's parser takes at most microseconds


def parse_time(value: object, default: float = 0.0) -> float:
    """An RFC 3339 time ("2026-11-28T13:16:13Z", nanoseconds allowed, or a datetime's str()) as a
    POSIX timestamp; `default` when it is missing or not a time."""
    if not isinstance(value, str) or not value.strip():
        return default
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip().replace("Z", "+00:00"))).timestamp()
    except ValueError:
        return default
