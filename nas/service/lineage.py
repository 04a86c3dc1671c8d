"""How a search's parent and a candidate's derivation read for people (issue 15).

One place for the words, shared by the search page (and so the offline report), the candidate
page and `nas show`, so that the three never disagree. The input is what the store keeps: the
parent record (`nas.parent.ParentRef.record`) and the derivation (`nas.derivation.Derivation.to_dict`)
as plain JSON. Neither is parsed strictly here: a derivation stored by an older or newer
version of nas still shows, its unknown keys as they are, because a reader that refuses a
stored row would hide a finished result. Pure (no FastAPI, no torch), so the CLI imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nas.derivation import Derivation

FINGERPRINT_SHOWN = 8  # hex digits of a parent fingerprint in one-line messages

# Derivation keys shown as "parent → candidate" pairs, in this order, with their labels.
_PAIRS = (("n_layer", "layers"), ("d_model", "d_model"), ("n_head", "query heads"),
          ("n_kv_head", "kv heads"), ("head_dim", "head_dim"), ("ffn", "FFN channels"),
          ("attention", "attention"), ("tie_embeddings", "embeddings"), ("params", "parameters"))
_DEPTH = {"importance": "importance: the layers that change their input most are kept",
          "uniform": "uniform: evenly spaced layers, first and last kept"}
_SHOWN = {"parent", "depth", "blocks", "kv_pooling", "summary", *(key for key, _ in _PAIRS)}


def parent_line(parent: Mapping[str, Any] | None) -> str:
    """``derived from parent <path> (<params> params, fingerprint <short>)``; "" without one."""
    if not parent:
        return ""
    params = parent.get("params")
    size = f"{params:,} params, " if isinstance(params, int) else ""
    return (f"derived from parent {parent.get('path', '?')} "
            f"({size}fingerprint {str(parent.get('fingerprint', '?'))[:FINGERPRINT_SHOWN]})")


def derivation_summary(derivation: Mapping[str, Any] | None) -> str:
    """One line: the derivation's own ``summary`` if it has one, else
    `nas.derivation.Derivation.describe` when the dict is one, else its keys compactly."""
    if not derivation:
        return ""
    if derivation.get("summary"):
        return str(derivation["summary"])
    try:
        return Derivation.from_dict(derivation).describe()
    except Exception:  # noqa: BLE001 - any other shape of dict still gets a line
        return "; ".join(f"{key} {_value(key, value)}" for key, value in derivation.items())


def derivation_rows(derivation: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) rows: parent fingerprint, depth strategy, the parent layers of each
    candidate block, widths parent → candidate and kv pooling; then any other key as stored."""
    if not derivation:
        return []
    d = derivation
    rows: list[tuple[str, str]] = []
    if "parent" in d:
        rows.append(("parent fingerprint", str(d["parent"])))
    if "depth" in d:
        rows.append(("depth strategy", _DEPTH.get(str(d["depth"]), str(d["depth"]))))
    rows += [(f"block {i}", _block(layers)) for i, layers in enumerate(d.get("blocks") or ())]
    rows += [(label, _value(key, d[key])) for key, label in _PAIRS if key in d]
    if "kv_pooling" in d:
        rows.append(("kv pooling", _pooling(d["kv_pooling"])))
    rows += [(str(key), _value(key, value)) for key, value in d.items() if key not in _SHOWN]
    return rows


def _block(layers: Any) -> str:
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        return str(layers)
    if len(layers) == 1:
        return f"parent layer {layers[0]}"
    return f"mean of parent layers {', '.join(map(str, layers))}"


def _pooling(k: Any) -> str:
    if k == 1:
        return "none: each kv head comes from one parent kv head"
    return f"up to {k} parent kv heads mean-pooled into one"


def _value(key: str, value: Any) -> str:
    """A pair as ``parent → candidate`` (one value when unchanged); anything else as JSON."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 \
            and key in dict(_PAIRS):
        a, b = value
        if key == "tie_embeddings":
            a, b = ("tied" if a else "untied"), ("tied" if b else "untied")
        if key == "params" and all(isinstance(v, int) for v in value) and a:
            return f"{a:,} → {b:,} ({100 * b / a:.0f}%)"
        return str(a) if a == b else f"{a} → {b}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
