"""The model card (``README.md`` of an export): `metrics.json`'s numbers and how to use each file.

Split from `nas.export` so the card's text, including the transformers generation example
that the tests run verbatim, lives in one place and imports no torch. The exported file
names are defined here; `nas.export` re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nas.architecture import Architecture

ARCHITECTURE_FILE = "architecture.json"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CARD_FILE = "README.md"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        # Counts stored as floats (params) read as counts; everything else with 4 digits.
        return f"{value:,.0f}" if abs(value) >= 1000 and value == int(value) else f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return lines


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


def _generation_example(arch: Architecture, info: Mapping[str, Any]) -> list[str]:
    special = info.get("special_tokens") or {}
    settings = generation_settings(arch, special, info.get("data", {}).get("corpus"))
    args = ", ".join(["**inputs", *(f"{k}={v!r}" for k, v in settings["kwargs"].items()),
                      *(["tokenizer=tokenizer"] if settings["needs_tokenizer"] else [])])
    lines = ["Hugging Face transformers (offline, from this directory), greedy generation:", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained('.')",
             "tokenizer = AutoTokenizer.from_pretrained('.')",
             f"inputs = tokenizer({settings['prompt']!r}, return_tensors='pt')",
             f"out = model.generate({args})",
             "print(tokenizer.decode(out[0], skip_special_tokens=True))", "```", ""]
    if "eos_token" in special:
        eos = special["eos_token"]
        lines += [f"`generate` stops at the end-of-text token `{eos['token']}` (id {eos['id']}), "
                  "which ended every training document: it is `eos_token_id` in "
                  f"`{CONFIG_FILE}` and `{GENERATION_CONFIG_FILE}`, and `eos_token` in "
                  f"`{TOKENIZER_CONFIG_FILE}` (also BOS and padding). `max_new_tokens` bounds "
                  "the rest.", ""]
    else:
        lines += ["The byte-level tokenizer has no special tokens (all 256 ids are bytes), so "
                  "there is no end-of-text token and the model never stops by itself: always "
                  "pass `max_new_tokens`, and a stop string (`stop_strings=[...]` together with "
                  "`tokenizer=tokenizer`) to stop at text such as a blank line.", ""]
    lines += [f"Keep prompt plus new tokens within `max_seq_len` = {arch.max_seq_len} positions "
              "(`max_position_embeddings` in the config): the model was built for no more.", ""]
    return lines


def render_card(arch: Architecture, info: Mapping[str, Any]) -> str:
    """The model card (README.md): `metrics.json`'s numbers and how to load every file."""
    mapped = info["huggingface"]["mapped"]
    lines = [f"# {info['search']} / trial {info['trial']}: {arch.describe()}", "",
             f"Exported by `nas export` (nas {info['nas_version']}) on {info['dates']['exported']} "
             f"from search `{info['search']}`, candidate {info['candidate_id']} (trial "
             f"{info['trial']}, architecture hash `{info['arch_hash']}`).", ""]
    lines += ["## Architecture", ""]
    derived = [("parameters (unique)", arch.n_params), ("non-embedding parameters", arch.non_embedding_params),
               ("head_dim", arch.head_dim), ("ffn hidden size", arch.ffn_hidden),
               ("unique blocks", arch.n_unique_blocks)]
    lines += _table(["field", "value"], [*arch.to_dict().items(), *derived]) + [""]

    lines += ["## Quality and size", ""]
    objectives = info["objectives"]
    rows = [(f"{m} (objective, {objectives[m]['direction']})", objectives[m]["value"])
            for m in objectives]
    rows += [(m, v) for m, v in info["metrics"].items() if m not in objectives]
    lines += _table(["metric", "value"], rows) + [""]
    lines += ["`val_loss` is nats/token on the search's fixed validation tokens after the proxy run.", ""]

    lines += ["## Latency", ""]
    if info["latency"]:
        rows = []
        for profile, lat in info["latency"].items():
            shape = ", ".join(f"{k}={v}" for k, v in lat["shape"].items())
            for phase in ("prefill", "decode"):
                s = lat[phase]
                rows.append((profile, phase, s["median_ms"], s["p90_ms"], f"{100 * s['cv']:.1f}%",
                             s["n"], shape))
        lines += _table(["profile", "graph", "median ms", "p90 ms", "CV", "n", "shape"], rows)
        lines += ["", "Measured with ONNX Runtime on these graphs' shapes during the search "
                  "(latency depends on shape, not on weights).", ""]
    else:
        lines += ["No latency was measured for this candidate.", ""]

    lines += ["## Training", ""]
    data, budget, proxy, weights = info["data"], info["proxy_budget"], info["proxy"], info["weights"]
    corpus = ", ".join(data.get("corpus", [])) if isinstance(data.get("corpus"), list) else data.get("corpus")
    lines += [f"- Corpus: {corpus}; tokenizer: `{data.get('tokenizer')}`.",
              "- Proxy budget: " + ", ".join(f"{k}={_num(v)}" for k, v in budget.items()) + ".",
              f"- Proxy run: {_num(proxy.get('tokens'))} tokens, validation loss "
              f"{_num(proxy.get('val_loss'))}, status {proxy.get('status', '-')}.",
              f"- Exported weights: {weights['source']}."]
    continued = weights.get("continued_training")
    if continued:
        lines.append(f"- Then trained for {_num(continued['tokens'])} more tokens at export "
                     f"(seed {continued['seed']}): validation loss {_num(continued['val_loss'])}.")
    lines.append("")

    lines += ["## Files", "",
              "| file | what |", "| --- | --- |",
              f"| `{ARCHITECTURE_FILE}` | the architecture (`nas.Architecture.from_json`) |",
              f"| `{METRICS_FILE}` | every number on this card |",
              "| `model.onnx` | prefill: `input_ids [batch, seq]` -> `logits`, `present.{i}.*` |",
              "| `decode.onnx` | one step: `input_ids`, `position_ids [batch, 1]`, `past.{i}.*` -> "
              "`logits [batch, 1, vocab]`, `present.{i}.*` |",
              f"| `{WEIGHTS_FILE}` | fp32 weights, Hugging Face Llama names, one tensor per layer "
              "application (shared blocks unrolled; no `lm_head.weight` when tied) |",
              f"| `tokenizer.json`, `{TOKENIZER_CONFIG_FILE}` | the tokenizer (`tokenizers` / "
              "`AutoTokenizer`) |"]
    if mapped:
        lines.append(f"| `{CONFIG_FILE}` | Hugging Face config ({info['huggingface']['model_type']}) |")
        if info.get("special_tokens"):
            lines.append(f"| `{GENERATION_CONFIG_FILE}` | the token ids `generate` stops at and pads with |")
    lines += [f"| `{CARD_FILE}` | this card |", ""]

    cache = ("`past.{i}.state` `[batch, n_kv_head, head_dim, head_dim]` and `past.{i}.norm` "
             "`[batch, n_kv_head, head_dim]` (start from zeros)" if arch.attention == "linear" else
             "`past.{i}.key`/`.value` `[batch, n_kv_head, past, head_dim]` (start with past=0"
             + (f"; the graph keeps the last {arch.window} positions" if arch.window else "") + ")")
    lines += ["## How to load", "", "PyTorch (this package):", "", "```python",
              "import nas, torch", "model = nas.load('.')  # architecture.json + model.safetensors",
              "logits = model(torch.tensor([[1, 2, 3]]))  # (batch, seq, vocab)", "```", "",
              f"ONNX Runtime: `model.onnx` runs a prompt; `decode.onnx` adds one token per call with "
              f"{cache}, for {arch.n_layer} layer applications, fed back from `present.*`.", "",
              "```python", "import numpy as np, onnxruntime as ort",
              "prefill = ort.InferenceSession('model.onnx')",
              "logits, *cache = prefill.run(None, {'input_ids': np.array([[1, 2, 3]], dtype=np.int64)})",
              "```", ""]
    if mapped:
        lines += _generation_example(arch, info)
        if arch.repeat > 1:
            lines += [f"Block sharing (`{arch.sharing}`) is unrolled: the transformers model has "
                      f"{arch.n_layer} layers holding {arch.n_unique_blocks} distinct sets of "
                      "weights, so it uses more memory than the shared model but computes the same.", ""]
    else:
        lines += [f"Hugging Face transformers: not available. The {info['huggingface']['reason']}, "
                  f"so there is no `{CONFIG_FILE}`; use the ONNX graphs or `nas.load`.", ""]

    parity = info["parity"]
    lines += ["## Parity (checked at export time, fp32)", ""]
    rows = [(f"ONNX Runtime {graph} vs PyTorch", diff, f"{parity['onnx_tolerance_rel']:g} x max(1, largest output)")
            for graph, diff in parity["onnx"].items()]
    rows.append(("nas.load vs the exported model (logits)", parity["nas_load"], parity["nas_load_tolerance"]))
    hf = parity.get("transformers")
    rows.append(("transformers vs ours (logits)", hf if isinstance(hf, float) else str(hf),
                 parity.get("transformers_tolerance", "-")))
    lines += _table(["check", "max abs diff", "tolerance"], rows) + [""]
    return "\n".join(lines)
