"""The one rule for names the product hands around: searches, spaces and profiles.

A search name becomes a URL path segment (``/searches/<name>``), an Optuna study name and a
file name in the service's log directory, so the command line and the web API must refuse
the same names; both import this module. Imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Any

from nas.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # also the API schema's `pattern`
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "1-64 letters, digits, '.', '_' or '-' starting with a letter or digit"


def is_valid_name(value: Any) -> bool:
    # fullmatch: `$` alone would let a trailing newline through.
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def check_name(key: str, value: Any, *, source: str | None = None) -> str:
    """``value`` if it obeys the name rule, else a ConfigError that states the rule."""
    if not is_valid_name(value):
        raise ConfigError(f"{key}={value!r} must be {NAME_RULE}", source=source, field=key,
                          value=value)
    return value
