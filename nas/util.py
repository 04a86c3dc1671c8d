"""Small helpers every layer shares: one canonical hash and one JSON-safe walk.

They live here (no torch, ray or onnxruntime; stdlib only) so that a second copy never grows
in a module that needs the same thing: a hash that must be stable across processes and
machines has to be computed the same way everywhere it is compared.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal values give equal text on every machine."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of `canonical_json(value)`.

    Architecture, space, data and profile hashes are all this; stored hashes (the latency
    cache, resume checks) depend on it staying byte-for-byte the same.
    """
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def json_safe(value: Any) -> Any:
    """Plain JSON data: NaN and infinities (a diverged loss) become null, tuples lists, mapping
    keys strings and datetimes ISO text. JSON itself has no NaN, and browsers reject it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def format_value(value: Any, digits: int = 4, *, none: str = "–", true: str = "yes",
                 false: str = "no") -> str:
    """A number as people read it in tables, cards and hover text: counts with thousands
    separators (a parameter count stored as a float is still a count), other floats with
    ``digits`` significant digits, NaN and infinities spelled out."""
    if value is None:
        return none
    if isinstance(value, bool):
        return true if value else false
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    return str(value)
