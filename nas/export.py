"""The exported directory of one candidate: what a deployment needs, verified when it is written.

``nas export NAME --trial N -o DIR`` (or `export_candidate`) writes::

    architecture.json     the `Architecture` (lossless: `Architecture.from_json` reads it back)
    metrics.json          objectives and metrics, latency per profile (median, p90, CV, n), search,
                          trial, corpus and tokenizer, proxy budget, training, dates, parity found
    model.onnx            prefill graph; decode.onnx: one step with KV cache / linear state
                          (I/O names in `nas.onnx_io`), checked by onnx.checker and ONNX Runtime
    model.safetensors     fp32 weights in Hugging Face Llama naming (`nas.checkpoint`)
    tokenizer.json        the search's tokenizer, with tokenizer_config.json for AutoTokenizer
    config.json           Hugging Face config, only where the architecture maps onto one, and
                          generation_config.json where the tokenizer has BOS/EOS/pad tokens
    README.md             the model card (`nas.model_card`): the numbers above and how to load each file

The weights, configs and tokenizer files are a Hugging Face checkpoint written by
`nas.checkpoint` (which also reads them back: `nas.load`); this module adds the ONNX graphs,
metrics.json and the card, and checks every reader before anything is published.

Tolerances (fp32, checked at export time; the diffs found go to metrics.json ``parity``):

* ONNX Runtime vs PyTorch: `nas.onnx_export.PARITY_RTOL` relative to each output's scale.
* `nas.load` vs the exported model: `LOAD_ATOL` (same weights, same code: 0 in practice).
* transformers vs our model: `nas.checkpoint.HF_ATOL`. Skipped, and said so, when
  transformers is not installed.

Nothing half-written is left behind: the directory is built beside the target under a hidden
name and renamed into place only when every check has passed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nas import __version__
from nas.architecture import Architecture
from nas.checkpoint import HF_ATOL, load, write_checkpoint
from nas.errors import ConfigError, ExportError
from nas.hf_config import ARCHITECTURE_FILE, hf_unsupported_reason
from nas.model import NasLM
from nas.model_card import CARD_FILE, METRICS_FILE, render_card
from nas.specs import DataSpec, ProxyBudget
from nas.util import json_safe

if TYPE_CHECKING:
    from nas.store import CandidateRecord, SearchRecord, Store

__all__ = ["HF_ATOL", "LOAD_ATOL", "NotExportableError", "check_exportable", "export_candidate"]

FORMAT_VERSION = 1
LOAD_ATOL = 1e-6

# (stage, done, total, detail): stages "weights", "train" (done/total steps, detail "loss x"),
# "onnx", "files", "verify".
ExportProgress = Callable[[str, int, int, str], None]


class NotExportableError(ExportError):
    """The candidate has no model to export (failed, pruned, infeasible or still running)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


def check_exportable(candidate: CandidateRecord) -> None:
    """Only a complete candidate has a model worth exporting."""
    if candidate.state == "complete":
        return
    what = "is still running" if candidate.state == "running" else f"is {candidate.state}"
    error = f": {candidate.error}" if candidate.error else ""
    raise NotExportableError(f"trial {candidate.trial_number} of search {candidate.search!r} "
                             f"(candidate {candidate.id}) {what}{error}; only complete candidates "
                             "can be exported", candidate.state)


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
    config = write_checkpoint(root, model, tokenizer)  # weights, tokenizer and HF config files
    special = tokenizer.special_tokens

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


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def _metrics(search: SearchRecord, candidate: CandidateRecord, weights: dict[str, Any],
             parity: dict[str, Any], tokenizer: str, huggingface: dict[str, Any]) -> dict[str, Any]:
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
