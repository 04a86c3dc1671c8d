"""The model card (``README.md`` of an export): `metrics.json`'s numbers and how to use each file.

The card's text is a Jinja template, ``nas/templates/model_card.md.j2``, so it reads as the
document it is; this module turns `metrics.json`'s data into the template's plain values (table
rows, formatted numbers, the ``generate`` call the tests run verbatim) and imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.hf_config import (
    ARCHITECTURE_FILE,
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from nas.util import format_value

if TYPE_CHECKING:
    import jinja2

__all__ = ["CARD_FILE", "METRICS_FILE", "generation_settings", "render_card"]

METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
TEMPLATE = "model_card.md.j2"


def _num(value: Any) -> str:
    """Card cells: Markdown-plain booleans and a hyphen for a missing value."""
    return format_value(value, none="-", true="true", false="false")


def _table(rows: Sequence[Sequence[Any]], *header: str) -> str:
    """A Markdown table, cells through `_num` (the template's ``table`` filter)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2

    # Markdown, not HTML: nothing to escape. StrictUndefined: a missing value is a bug, not a blank.
    env = jinja2.Environment(loader=jinja2.PackageLoader("nas", "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(num=_num, table=_table)
    return env


def generation_settings(arch: Architecture, special_tokens: Mapping[str, Any],
                        corpus: Any = None) -> dict[str, Any]:
    """The card's ``generate`` example as data (the tests run exactly these settings).

    With an end-of-text token, ``generate`` stops there by itself; ``max_new_tokens`` only
    bounds it. Without one (byte level) the model never stops on its own, so the example
    bounds it with ``max_new_tokens`` and stops at a blank line with ``stop_strings``.
    """
    prompt = "def " if corpus in ("stdlib", ["stdlib"]) else "The "
    kwargs: dict[str, Any] = {"max_new_tokens": max(1, min(64, arch.max_seq_len // 2)),
                              "do_sample": False}
    if "eos_token" not in special_tokens:
        kwargs["stop_strings"] = ["\n\n"]
        kwargs["pad_token_id"] = 0  # any id: batch-1 output is never padded; silences a warning
    return {"prompt": prompt, "kwargs": kwargs, "needs_tokenizer": "stop_strings" in kwargs}


def _generation(arch: Architecture, info: Mapping[str, Any]) -> dict[str, Any]:
    special = info.get("special_tokens") or {}
    settings = generation_settings(arch, special, info.get("data", {}).get("corpus"))
    arguments = ", ".join(["**inputs", *(f"{k}={v!r}" for k, v in settings["kwargs"].items()),
                           *(["tokenizer=tokenizer"] if settings["needs_tokenizer"] else [])])
    return {"prompt_literal": repr(settings["prompt"]), "generate_arguments": arguments,
            "eos": special.get("eos_token"), "has_special_tokens": bool(special)}


def _rows(arch: Architecture, info: Mapping[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """The card's tables as rows of plain values (formatted by the template's ``table``)."""
    derived = [("parameters (unique)", arch.n_params),
               ("non-embedding parameters", arch.non_embedding_params), ("head_dim", arch.head_dim),
               ("ffn hidden size", arch.ffn_hidden), ("unique blocks", arch.n_unique_blocks)]
    objectives = info["objectives"]
    metrics = [(f"{m} (objective, {objectives[m]['direction']})", objectives[m]["value"]) for m in objectives]
    metrics += [(m, v) for m, v in info["metrics"].items() if m not in objectives]
    latency = []
    for profile, lat in info["latency"].items():
        shape = ", ".join(f"{k}={v}" for k, v in lat["shape"].items())
        for phase in ("prefill", "decode"):
            s = lat[phase]
            latency.append((profile, phase, s["median_ms"], s["p90_ms"], f"{100 * s['cv']:.1f}%",
                            s["n"], shape))
    parity = info["parity"]
    checks = [(f"ONNX Runtime {graph} vs PyTorch", diff,
               f"{parity['onnx_tolerance_rel']:g} x max(1, largest output)")
              for graph, diff in parity["onnx"].items()]
    checks.append(("nas.load vs the exported model (logits)", parity["nas_load"],
                   parity["nas_load_tolerance"]))
    hf = parity.get("transformers")
    checks.append(("transformers vs ours (logits)", hf if isinstance(hf, float) else str(hf),
                   parity.get("transformers_tolerance", "-")))
    return {"architecture_rows": [*arch.to_dict().items(), *derived], "metric_rows": metrics,
            "latency_rows": latency, "parity_rows": checks}


def render_card(arch: Architecture, info: Mapping[str, Any]) -> str:
    """The model card (README.md): `metrics.json`'s numbers (``info``) and how to load every file."""
    huggingface, data, proxy = info["huggingface"], info["data"], info["proxy"]
    corpus = data.get("corpus")
    context = {
        "search": info["search"], "trial": info["trial"], "describe": arch.describe(),
        "nas_version": info["nas_version"], "exported": info["dates"]["exported"],
        "candidate_id": info["candidate_id"], "arch_hash": info["arch_hash"],
        **_rows(arch, info),
        "corpus": ", ".join(corpus) if isinstance(corpus, list) else corpus,
        "tokenizer": data.get("tokenizer"), "budget": info["proxy_budget"],
        "proxy": {"tokens": proxy.get("tokens"), "val_loss": proxy.get("val_loss"),
                  "status": proxy.get("status", "-")},
        "weights_source": info["weights"]["source"],
        "continued": info["weights"].get("continued_training"),
        "files": {"architecture": ARCHITECTURE_FILE, "metrics": METRICS_FILE, "weights": WEIGHTS_FILE,
                  "tokenizer": TOKENIZER_FILE, "tokenizer_config": TOKENIZER_CONFIG_FILE,
                  "config": CONFIG_FILE, "generation_config": GENERATION_CONFIG_FILE, "card": CARD_FILE},
        "hf_model_type": huggingface["model_type"] if huggingface["mapped"] else None,
        "hf_unmapped_reason": huggingface.get("reason"),
        "linear": arch.attention == "linear", "window": arch.window, "n_layer": arch.n_layer,
        "max_seq_len": arch.max_seq_len, "n_unique_blocks": arch.n_unique_blocks,
        "unrolled_sharing": arch.sharing if arch.repeat > 1 else None,
        **_generation(arch, info),
    }
    return _environment().get_template(TEMPLATE).render(context) + "\n"
