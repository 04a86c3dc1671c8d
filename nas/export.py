"""The exported directory of one candidate: what a deployment needs, verified when it is written.

``nas export NAME --trial N -o DIR`` (or `export_candidate`) writes::

    architecture.json     the `Architecture` (lossless: `Architecture.from_json` reads it back)
    metrics.json          objectives and metrics, latency per profile (median, p90, CV, n), search,
                          trial, corpus and tokenizer, proxy budget, training, dates, parity found
    model.onnx            prefill graph; decode.onnx: one step with KV cache / linear state
                          (I/O names in `nas.onnx_io`), checked by onnx.checker and ONNX Runtime
    model.safetensors     fp32 weights in Hugging Face Llama naming (below)
    tokenizer.json        the search's tokenizer, with tokenizer_config.json for AutoTokenizer
    config.json           Hugging Face config, only where the architecture maps onto one, and
                          generation_config.json where the tokenizer has BOS/EOS/pad tokens
    README.md             the model card: the numbers above and how to load each file

One weights file for every reader. ``model.safetensors`` holds one tensor per *layer
application* under Llama's names (``model.layers.{i}.self_attn.q_proj.weight``, ...), so a shared
block (``sharing`` all / repeat:k) is unrolled into identical copies, and tied embeddings store
only ``model.embed_tokens.weight`` (transformers ties ``lm_head`` from ``tie_word_embeddings``).
transformers reads the file as is; `load` re-ties the copies into one block and refuses a file
whose copies differ. The price is size for shared models (the block is stored ``repeat`` times);
the ONNX graphs keep unique weights. The same layout is used for linear attention, which has no
transformers equivalent, so there is one rule to document.

Hugging Face mapping (`hf_config`): ``softmax`` -> ``LlamaForCausalLM``; ``sliding_window`` ->
``MistralForCausalLM`` with ``sliding_window = window``: transformers' overlay keeps key s for
query t iff ``s > t - sliding_window`` (``masking_utils.sliding_window_overlay``), exactly our
``t - window < s <= t``, so there is no off-by-one (the tests show window +- 1 gives different
logits). ``linear`` has no mapping: the card says so and there is no config.json. Rotary and
norm constants follow `nas.model` (theta 1e4, eps 1e-5); the config spells rope both as
``rope_parameters`` (transformers 5) and ``rope_theta`` (4.x).

Tolerances (fp32, checked at export time; the diffs found go to metrics.json ``parity``):

* ONNX Runtime vs PyTorch: `nas.onnx_export.PARITY_RTOL` (1e-4) relative to each output's scale.
* `load` vs the exported model: `LOAD_ATOL` (same weights, same code: 0 in practice).
* transformers vs our model: max |logit difference| <= `HF_ATOL` = 1e-4 (measured 0 with SDPA,
  ~1e-7 with eager attention). Skipped, and said so, when transformers is not installed.

Nothing half-written is left behind: the directory is built beside the target under a hidden
name and renamed into place only when every check has passed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from nas.architecture import Architecture
from nas.errors import ConfigError, ExportError, NotFoundError
from nas.model import RMS_NORM_EPS, ROPE_THETA, NasLM, build_model
from nas.model_card import (
    ARCHITECTURE_FILE,
    CARD_FILE,
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    METRICS_FILE,
    TOKENIZER_CONFIG_FILE,
    WEIGHTS_FILE,
    _num,
    generation_settings,
    render_card,
)
from nas.specs import DataSpec, ProxyBudget

if TYPE_CHECKING:
    from nas.space import Constraint
    from nas.store import CandidateRecord, SearchRecord, Store

__all__ = ["HF_ATOL", "LOAD_ATOL", "NotExportableError", "Pick", "export_candidate",
           "from_hf_state_dict", "generation_config", "generation_settings", "hf_config",
           "hf_unsupported_reason", "load", "parse_where", "pick_candidate", "render_card",
           "to_hf_state_dict"]

FORMAT_VERSION = 1
HF_ATOL = 1e-4
LOAD_ATOL = 1e-6

# (stage, done, total, detail): stages "weights", "train" (done/total steps, detail "loss x"),
# "onnx", "files", "verify".
ExportProgress = Callable[[str, int, int, str], None]


class NotExportableError(ExportError):
    """The candidate has no model to export (failed, pruned or still running)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class Pick(NamedTuple):
    search: SearchRecord
    candidate: CandidateRecord
    reason: str  # how it was chosen, for the user: "trial 3", "knee of the front of 5", ...


# ----- choosing a candidate ---------------------------------------------------------------
_WHERE_RE = re.compile(r"^\s*([^<>=\s]+)\s*(<=|>=)\s*(\S+)\s*$")


def parse_where(text: str) -> Constraint:
    """``METRIC<=VALUE`` or ``METRIC>=VALUE`` (e.g. ``params<=1e6``)."""
    from nas.space import Constraint

    match = _WHERE_RE.match(text)
    bound = None
    if match:
        try:
            bound = float(match.group(3))
        except ValueError:
            pass
    if match is None or bound is None or not math.isfinite(bound):
        raise ConfigError(f"--where={text!r} must look like METRIC<=NUMBER or METRIC>=NUMBER "
                          "(e.g. params<=1e6)", field="--where", value=text)
    return Constraint(match.group(1), match.group(2), bound)  # type: ignore[arg-type]


def pick_candidate(store: Store, name: str, trial: int | None = None, pick: str | None = None,
                   where: Sequence[str] | None = None) -> Pick:
    """The candidate ``--trial N`` names, or the one ``--pick`` chooses.

    ``pick``: ``knee`` (the knee of the front of the candidates that meet the search's
    constraints and every ``where``) or ``best:METRIC[:min|max]`` (the best value of METRIC
    among those; the direction defaults to the objective's, else min). The state of the
    candidate is not checked here: `export_candidate` refuses what cannot be exported.
    """
    from nas import fronts

    search = store.get_search(name)  # NotFoundError lists the existing searches
    if (trial is None) == (pick is None):
        raise ConfigError("give exactly one of --trial N or --pick knee|best:METRIC")
    if trial is not None:
        if where:
            raise ConfigError("--where narrows --pick; it does not apply to --trial")
        try:
            return Pick(search, store.candidate_by_trial(name, trial), f"trial {trial}")
        except NotFoundError:
            trials = [c.trial_number for c in store.candidates(name)]
            raise NotFoundError(f"search {name!r} has no trial {trial} "
                                f"(trials: {_ranges(trials) or 'none yet'})") from None
    assert pick is not None
    bounds = [parse_where(w) for w in where or ()]
    analysis = fronts.analyze(search, store.candidates(name))
    if not analysis.complete:
        states = _count_states(analysis.candidates, live=search.status in LIVE_STATUSES)
        raise NotFoundError(f"search {name!r} has no complete candidate to pick from ({states})")
    known = sorted({m for c in analysis.complete for m in c.metrics})
    metric, direction = _parse_pick(pick, analysis)
    for m in [b.metric for b in bounds] + ([metric] if metric else []):
        if m not in known:
            raise ConfigError(f"unknown metric {m!r} (known: {', '.join(known)})", value=m)
    feasible = [c for c, ok in zip(analysis.complete, analysis.feasible) if ok]
    pool = [c for c in feasible if all(b.violation(c.metrics.get(b.metric, math.nan)) <= 0
                                       for b in bounds)]
    if not pool:
        raise NotFoundError(_no_match(name, analysis.complete, feasible, bounds))
    among = (f"the {len(pool)} candidates meeting {', '.join(b.text for b in bounds)}" if bounds
             else f"{len(pool)} feasible candidates")
    if metric is None:
        sub = fronts.analyze(search, pool)
        chosen = next((c for c in pool if c.id == sub.knee_id), None)
        if chosen is None:
            raise NotFoundError(f"search {name!r}: no knee among {among} (objective values missing?)")
        return Pick(search, chosen, f"knee of the {len(sub.front)}-candidate front among {among}")
    sign = -1.0 if direction == "max" else 1.0
    scored = [(sign * c.metrics[metric], c.trial_number, c) for c in pool
              if math.isfinite(c.metrics.get(metric, math.nan))]
    if not scored:
        raise NotFoundError(f"search {name!r}: no finite {metric} among {among}")
    chosen = min(scored, key=lambda s: s[:2])[2]
    return Pick(search, chosen, f"{'highest' if direction == 'max' else 'lowest'} {metric} "
                                f"({_num(chosen.metrics[metric])}) of {among}")


def _parse_pick(pick: str, analysis: Any) -> tuple[str | None, str]:
    if pick == "knee":
        return None, "min"
    if not pick.startswith("best:") or len(pick) <= 5:
        raise ConfigError(f"--pick={pick!r} must be 'knee' or 'best:METRIC' (e.g. best:val_loss)",
                          field="--pick", value=pick)
    metric, direction = pick[5:], ""
    head, sep, tail = metric.rpartition(":")
    if sep and tail in ("min", "max", "minimize", "maximize"):
        metric, direction = head, tail[:3]
    if not direction:
        directions = dict(zip(analysis.metrics, analysis.directions))
        direction = directions.get(metric, "min")
    return metric, direction


def _no_match(name: str, complete: Sequence[CandidateRecord], feasible: Sequence[CandidateRecord],
              bounds: Sequence[Constraint]) -> str:
    if not feasible:
        return (f"none of the {len(complete)} complete candidates of search {name!r} meets the "
                "search's constraints")

    def miss(c: CandidateRecord) -> float:
        return sum(max(0.0, b.violation(c.metrics.get(b.metric, math.nan))) for b in bounds)

    closest = min(feasible, key=lambda c: (miss(c), c.trial_number))
    values = ", ".join(f"{b.metric}={_num(closest.metrics.get(b.metric, math.nan))}" for b in bounds)
    return (f"no candidate of search {name!r} meets {', '.join(b.text for b in bounds)} "
            f"({len(feasible)} feasible complete candidates); closest: trial "
            f"{closest.trial_number} ({values})")


def _count_states(records: Sequence[CandidateRecord], live: bool) -> str:
    """'2 failed, 1 running'; a trial its stopped or lost driver left running is 'interrupted'."""
    counts: dict[str, int] = {}
    for r in records:
        state = r.state if live or r.state != "running" else "interrupted"
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no candidates yet"


def _ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def check_exportable(candidate: CandidateRecord) -> None:
    """Only a complete candidate has a model worth exporting."""
    if candidate.state == "complete":
        return
    what = "is still running" if candidate.state == "running" else f"is {candidate.state}"
    error = f": {candidate.error}" if candidate.error else ""
    raise NotExportableError(f"trial {candidate.trial_number} of search {candidate.search!r} "
                             f"(candidate {candidate.id}) {what}{error}; only complete candidates "
                             "can be exported", candidate.state)


# ----- Hugging Face mapping ---------------------------------------------------------------
def hf_unsupported_reason(arch: Architecture) -> str | None:
    """Why ``arch`` has no transformers equivalent, or None when `hf_config` maps it."""
    if arch.attention == "linear":
        return ("linear attention (elu+1 feature map, no rotary, O(1) recurrent state) has no "
                "Llama-style equivalent in transformers")
    return None


def hf_config(arch: Architecture,
              special_tokens: Mapping[str, tuple[str, int]] | None = None) -> dict[str, Any] | None:
    """The ``config.json`` that makes transformers build ``arch`` (None for linear attention).

    Block sharing needs no field: the weights are unrolled, one copy per layer application.
    ``special_tokens`` (`nas.data.Tokenizer.special_tokens`) names the BOS/EOS/pad ids, so
    ``generate`` stops at end-of-text; the byte tokenizer has none, and they stay null.
    """
    if hf_unsupported_reason(arch) is not None:
        return None
    sliding = arch.attention == "sliding_window"
    config: dict[str, Any] = {
        "architectures": ["MistralForCausalLM" if sliding else "LlamaForCausalLM"],
        "model_type": "mistral" if sliding else "llama",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.d_model,
        "intermediate_size": arch.ffn_hidden,
        "num_hidden_layers": arch.n_layer,
        "num_attention_heads": arch.n_head,
        "num_key_value_heads": arch.n_kv_head,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": arch.max_seq_len,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "rope_theta": ROPE_THETA,  # transformers 4.x reads this; 5.x folds it into rope_parameters
        "tie_word_embeddings": arch.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        **_special_ids(special_tokens),
        "torch_dtype": "float32",
    }
    if sliding:
        config["sliding_window"] = arch.window  # same semantics as ours: see the module docstring
    else:
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return config


def _special_ids(special_tokens: Mapping[str, tuple[str, int]] | None) -> dict[str, int | None]:
    """``{bos,eos,pad}_token_id``: the tokenizer's ids, null where it has no such token."""
    special = special_tokens or {}
    return {f"{role}_id": (special[role][1] if role in special else None)
            for role in ("bos_token", "eos_token", "pad_token")}


def generation_config(special_tokens: Mapping[str, tuple[str, int]] | None) -> dict[str, Any] | None:
    """``generation_config.json``: the ids ``generate`` stops at and pads with, or None when
    the tokenizer has no special tokens (then there is nothing to say; the card says how to
    stop). No ``max_length``: transformers warns when it meets the card's ``max_new_tokens``."""
    ids = {k: v for k, v in _special_ids(special_tokens).items() if v is not None}
    return ids or None


def _hf_names(arch: Architecture, model: NasLM) -> list[tuple[str, int, str]]:
    """(HF name, unique block or -1, name inside the block / our top-level name) per tensor."""
    names = [("model.embed_tokens.weight", -1, "embed_tokens.weight")]
    block_keys = list(model.layers[0].state_dict())
    for i, block in enumerate(arch.layer_to_block):
        names += [(f"model.layers.{i}.{key}", block, key) for key in block_keys]
    names.append(("model.norm.weight", -1, "norm.weight"))
    if not arch.tie_embeddings:
        names.append(("lm_head.weight", -1, "lm_head.weight"))
    return names


def to_hf_state_dict(model: NasLM, arch: Architecture) -> dict[str, Tensor]:
    """HF Llama names, one entry per layer application (shared blocks copied), fp32 on the CPU;
    no ``lm_head.weight`` with tied embeddings."""
    if model.arch != arch:
        raise ExportError(f"model was built for {model.arch.describe()}, not {arch.describe()}")
    ours = model.state_dict()
    blocks = [block.state_dict() for block in model.layers]
    out = {}
    for hf_name, block, key in _hf_names(arch, model):
        tensor = ours[key] if block < 0 else blocks[block][key]
        # safetensors refuses tensors that share storage: every entry is its own copy.
        out[hf_name] = tensor.detach().to("cpu", torch.float32).clone().contiguous()
    return out


def from_hf_state_dict(arch: Architecture, state: Mapping[str, Tensor],
                       source: str = "weights") -> NasLM:
    """Our model from `to_hf_state_dict`'s layout, re-tying shared blocks (eval mode, CPU).

    Every copy of a shared block must equal the first: otherwise the file is not ``arch``.
    """
    model = build_model(arch)  # initial values are all overwritten below
    names = _hf_names(arch, model)
    expected = {n for n, _, _ in names}
    extra = set(state) - expected
    if arch.tie_embeddings and "lm_head.weight" in extra:
        # Some writers store the tied head anyway: accept it only if it *is* the embedding.
        if not torch.equal(state["lm_head.weight"], state.get("model.embed_tokens.weight", torch.empty(0))):
            raise ExportError(f"{source}: lm_head.weight differs from the embedding, but "
                              "tie_embeddings=true")
        extra.discard("lm_head.weight")
    missing = sorted(expected - set(state))
    if missing or extra:
        raise ExportError(f"{source}: does not match {arch.describe()}: missing {missing[:5]}, "
                          f"unexpected {sorted(extra)[:5]}")
    ours = model.state_dict()
    blocks = [block.state_dict() for block in model.layers]
    first: dict[int, int] = {}  # unique block -> first layer application that filled it
    with torch.no_grad():
        for hf_name, block, key in names:
            target = ours[key] if block < 0 else blocks[block][key]
            tensor = state[hf_name]
            if tensor.shape != target.shape:
                raise ExportError(f"{source}: {hf_name} has shape {tuple(tensor.shape)}, "
                                  f"{arch.describe()} needs {tuple(target.shape)}")
            layer = int(hf_name.split(".")[2]) if block >= 0 else -1
            if block >= 0 and first.setdefault(block, layer) != layer:
                if not torch.equal(target, tensor.to(target.dtype)):
                    raise ExportError(
                        f"{source}: {hf_name} differs from model.layers.{first[block]}.{key}, but "
                        f"sharing={arch.sharing!r} makes layers {first[block]} and {layer} one block")
                continue
            target.copy_(tensor)  # state_dict tensors alias the parameters, ties included
    return model.eval()


def load(directory: str | os.PathLike[str]) -> NasLM:
    """The PyTorch model of an exported directory (``architecture.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    root = Path(directory)
    arch_path, weights_path = root / ARCHITECTURE_FILE, root / WEIGHTS_FILE
    for path in (arch_path, weights_path):
        if not path.is_file():
            raise NotFoundError(f"{root}: no {path.name} (not a directory written by nas export)")
    arch = Architecture.from_json(arch_path.read_text(), source=str(arch_path))
    return from_hf_state_dict(arch, load_file(str(weights_path)), source=str(weights_path))


# ----- export -----------------------------------------------------------------------------
def export_candidate(store: Store, search: SearchRecord | str, candidate: CandidateRecord | int,
                     out_dir: str | os.PathLike[str], *, train_tokens: int | None = None,
                     force: bool = False, progress: ExportProgress | None = None) -> Path:
    """Write the exported directory of a complete candidate to ``out_dir``; returns its path.

    ``train_tokens``: continue training the proxy-run weights for this many tokens first (with
    the search's budget otherwise, fresh optimizer, a new data seed). Without stored weights the
    proxy run is repeated (same budget and seed). An existing ``out_dir`` is refused unless
    ``force``, and even then only when it is empty or an earlier export.
    """
    search = store.get_search(search) if isinstance(search, str) else search
    candidate = store.candidate(candidate) if isinstance(candidate, int) else candidate
    if candidate.search != search.name:
        raise ExportError(f"candidate {candidate.id} (trial {candidate.trial_number}) belongs to "
                          f"search {candidate.search!r}, not {search.name!r}")
    check_exportable(candidate)
    if train_tokens is not None and train_tokens < 1:
        raise ConfigError(f"--train-tokens={train_tokens} must be >= 1", field="--train-tokens",
                          value=train_tokens)
    out = Path(out_dir)
    _check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _write(store, search, candidate, tmp, train_tokens, progress or _quiet)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the export from a deployment's user
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _quiet(stage: str, done: int, total: int, detail: str) -> None:
    pass


def _check_target(out: Path, force: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; refusing to replace it")
    if any(out.iterdir()) and not (out / ARCHITECTURE_FILE).is_file():
        # --force replaces an earlier export, never an arbitrary directory (think `-o ~`).
        raise ExportError(f"{out} is not empty and is not a nas export (no {ARCHITECTURE_FILE}); "
                          "refusing to replace it, even with --force")


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished directory into place; an old export is swapped out, then removed."""
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write(store: Store, search: SearchRecord, candidate: CandidateRecord, root: Path,
           train_tokens: int | None, progress: ExportProgress) -> None:
    from safetensors.torch import save

    from nas.data import load_tokenizer
    from nas.onnx_export import export_onnx

    arch = candidate.architecture
    # The tokenizer first: a BPE whose corpus is gone fails here, before minutes of work.
    tokenizer = load_tokenizer(DataSpec.from_dict(search.data, source=f"search {search.name}"))
    if tokenizer.vocab_size > arch.vocab_size:
        raise ExportError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids, more than "
                          f"the model's vocab_size={arch.vocab_size}")
    progress("weights", 0, 0, "")
    model, weights = _proxy_model(store, search, candidate, progress)
    if train_tokens is not None:
        model, weights["continued_training"] = _continue_training(model, search, train_tokens, progress)
    (root / ARCHITECTURE_FILE).write_text(arch.to_json(indent=2) + "\n")

    progress("onnx", 0, 0, "")
    graphs = export_onnx(model, arch, root)  # checker + ONNX Runtime parity, or ExportError

    progress("files", 0, 0, "")
    # Serialised in memory and written like every other file: safetensors' save_file creates
    # its file 0600, which would hide the weights from a deployment's user; this honours umask.
    (root / WEIGHTS_FILE).write_bytes(save(
        to_hf_state_dict(model, arch),
        metadata={"format": "pt", "nas.architecture": arch.to_json(),
                  "nas.layout": "hf-llama: one tensor per layer application"}))
    special = tokenizer.special_tokens
    config = hf_config(arch, special)
    if config is not None:
        _write_json(root / CONFIG_FILE, config)
        generation = generation_config(special)
        if generation is not None:
            _write_json(root / GENERATION_CONFIG_FILE, generation)
    tokenizer.save(root)
    _write_json(root / TOKENIZER_CONFIG_FILE, {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": arch.max_seq_len,
        "clean_up_tokenization_spaces": False,
        **{role: text for role, (text, _id) in special.items()}})

    progress("verify", 0, 0, "")
    parity = {"onnx": graphs.max_abs_diff, "onnx_tolerance_rel": _onnx_rtol(),
              **_verify(model, arch, root, config is not None)}
    huggingface = ({"mapped": True, "model_type": config["model_type"]} if config is not None
                   else {"mapped": False, "reason": hf_unsupported_reason(arch)})
    info = _metrics(search, candidate, weights, parity, tokenizer.name, huggingface)
    info["special_tokens"] = {role: {"token": text, "id": token_id}
                              for role, (text, token_id) in special.items()}
    _write_json(root / METRICS_FILE, info)
    (root / CARD_FILE).write_text(render_card(arch, info))


def _onnx_rtol() -> float:
    from nas.onnx_export import PARITY_RTOL

    return PARITY_RTOL


def _seed(search: SearchRecord) -> int:
    seed = search.space.get("seed", 0) if isinstance(search.space, Mapping) else 0
    return int(seed) if isinstance(seed, int) else 0


def _proxy_model(store: Store, search: SearchRecord, candidate: CandidateRecord,
                 progress: ExportProgress) -> tuple[NasLM, dict[str, Any]]:
    from nas.proxy import train, weights_from_bytes

    arch = candidate.architecture
    if candidate.has_weights:
        try:
            model = weights_from_bytes(arch, store.weights(candidate.id))
        except ValueError as err:
            raise ExportError(f"trial {candidate.trial_number} of search {candidate.search!r}: "
                              f"stored weights are unusable: {err}") from err
        return model, {"source": "proxy run (weights stored by the search)"}
    # The worker's weights were not kept (e.g. a result from before they were stored): repeat
    # the proxy run. Same budget, data and seed; identical up to thread-count rounding effects.
    budget = ProxyBudget.from_dict(search.budget, source=f"search {search.name}")
    trained = train(arch, budget, _token_data(search), seed=_seed(search),
                    progress=_train_progress(progress))
    if trained.result.status == "diverged":
        raise ExportError(f"re-running the proxy run of trial {candidate.trial_number} diverged: "
                          f"{trained.result.reason}")
    return trained.model, {"source": "proxy run repeated at export (weights were not stored)",
                           "rebuilt_val_loss": trained.result.val_loss}


def _token_data(search: SearchRecord) -> Any:
    from nas.data import prepare

    return prepare(DataSpec.from_dict(search.data, source=f"search {search.name}"))


def _train_progress(progress: ExportProgress) -> Callable[[int, int, float], None]:
    return lambda done, total, loss: progress("train", done, total, f"loss {loss:.3f}")


def _continue_training(model: NasLM, search: SearchRecord, tokens: int,
                       progress: ExportProgress) -> tuple[NasLM, dict[str, Any]]:
    from nas.proxy import train

    budget = dataclasses.replace(ProxyBudget.from_dict(search.budget, source=f"search {search.name}"),
                                 tokens=tokens, max_seconds=None)
    seed = _seed(search) + 1  # other training windows than the proxy run saw
    trained = train(model.arch, budget, _token_data(search), seed=seed,
                    progress=_train_progress(progress), model=model)
    result = trained.result
    if result.status == "diverged":
        raise ExportError(f"continued training diverged: {result.reason}; export without "
                          "--train-tokens, or with fewer")
    return trained.model, {"tokens": result.tokens, "val_loss": result.val_loss,
                           "seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
                           "seed": seed, "device": result.device, "budget": budget.to_dict()}


def _sample_ids(arch: Architecture) -> Tensor:
    # Longer than the window, so a wrong window shows up in the logits.
    length = min(arch.max_seq_len, max(16, (arch.window or 0) + 4))
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, arch.vocab_size, (2, length), generator=generator)


def _verify(model: NasLM, arch: Architecture, root: Path, mapped: bool) -> dict[str, Any]:
    """`load` and (where mapped) transformers give our logits from what was written."""
    ids = _sample_ids(arch)
    with torch.no_grad():
        want = model.eval()(ids)
        diff = float((load(root)(ids) - want).abs().max())
    if not diff <= LOAD_ATOL:
        raise ExportError(f"nas.load of the export differs from the model: max |logit diff| "
                          f"{diff:.3g} > {LOAD_ATOL:g}")
    out: dict[str, Any] = {"nas_load": diff, "nas_load_tolerance": LOAD_ATOL}
    if not mapped:
        out["transformers"] = f"not applicable: {hf_unsupported_reason(arch)}"
        return out
    try:
        hf_logits = _transformers_logits(root, ids)
    except ImportError:
        out["transformers"] = "not checked: transformers is not installed"
        return out
    diff = float((hf_logits - want).abs().max())
    if not diff <= HF_ATOL:
        raise ExportError(f"transformers' model from config.json differs from ours: max |logit "
                          f"diff| {diff:.3g} > {HF_ATOL:g}")
    out.update(transformers=diff, transformers_tolerance=HF_ATOL)
    return out


def _transformers_logits(root: Path, ids: Tensor) -> Tensor:
    import transformers
    from transformers.utils import logging as hf_logging

    # Keep export output clean: no weight-loading progress bar or info logs from transformers.
    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(root)).eval()
        with torch.no_grad():
            return hf(ids).logits.float()
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_were_off:
            hf_logging.enable_progress_bar()


# ----- metrics.json (the card: nas.model_card) --------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _jsonable(value: Any) -> Any:
    """JSON has no NaN/inf: they become null (a diverged val_loss is inf in the store)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def _metrics(search: SearchRecord, candidate: CandidateRecord, weights: dict[str, Any],
             parity: dict[str, Any], tokenizer: str, huggingface: dict[str, Any]) -> dict[str, Any]:
    from nas import __version__

    arch = candidate.architecture
    profiles = {p.get("name"): p for p in search.profiles if isinstance(p, Mapping)}
    latency = {}
    for lat in candidate.latencies:
        profile = profiles.get(lat.profile, {})
        latency[lat.profile] = {
            "profile_hash": lat.profile_hash, "node": lat.node,
            "shape": {k: profile[k] for k in ("batch", "prompt_len", "past_len", "precision",
                                               "intra_op_threads") if k in profile},
            "prefill": dataclasses.asdict(lat.prefill), "decode": dataclasses.asdict(lat.decode)}
    proxy = {k: v for k, v in candidate.proxy.items() if k != "curve"}
    return {
        "format": FORMAT_VERSION,
        "nas_version": __version__,
        "search": search.name,
        "trial": candidate.trial_number,
        "candidate_id": candidate.id,
        "arch_hash": arch.hash,
        "architecture": arch.describe(),
        "objectives": {m: {"direction": d, "value": candidate.metrics.get(m)}
                       for m, d in search.objectives},
        "metrics": dict(sorted(candidate.metrics.items())),
        "latency": latency,
        "data": {**search.data, "tokenizer": tokenizer},
        "proxy_budget": search.budget,
        "proxy": proxy,
        "weights": weights,
        "huggingface": huggingface,
        "parity": parity,
        "dates": {"search_created": _iso(search.created_at),
                  "candidate_started": _iso(candidate.started_at),
                  "candidate_finished": _iso(candidate.finished_at),
                  "exported": _iso(datetime.now(timezone.utc))},
    }
