"""Jinja templates shared by the pages and the offline report, and safe JSON for <script>."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from nas.dates import format_when
from nas.service.lineage import parent_line
from nas.util import format_value, json_safe

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"


def plotly_js_path() -> Path:
    """The plotly.js bundled with the installed ``plotly`` package: pages work offline."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def script_json(value: Any) -> Markup:
    """JSON safe inside ``<script>``: no ``</script>``, ``<!--`` or line separators survive,
    and NaN/infinity (not JSON) become null."""
    text = json.dumps(json_safe(value), separators=(",", ":"), allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return Markup(text)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


@cache
def static_text(name: str) -> str:
    """One of our static files, for inlining into the offline report."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)),
                      autoescape=select_autoescape(["html", "svg"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(script_json=script_json, fmt=format_value, when=format_when, duration=_duration,
                       parent_line=parent_line)
    env.globals.update(static_text=static_text)
    return env
