"""A search's parent model (issue 15): read once by the driver, shipped once to every worker.

The driver reads the checkpoint (`nas.checkpoint.read_checkpoint`), measures the importance of
its layers, heads and channels on calibration tokens (`nas.derive.parent_importance`) and puts
one `ParentRef` in Ray's object store: weights as safetensors bytes, so a worker on another node
needs no access to the parent's directory. A worker rebuilds the parent once per process
(`parent_model`, cached by fingerprint) and uses it twice per candidate: as the source of the
candidate's initial weights (`derived_start`) and as the teacher it is distilled from.

The fingerprint is a hash of the parent's architecture and weights, not of its path: the same
files at another path are the same parent, and changed weights at the same path are not (a
resume refuses them, `SearchRequest.resume_refusal`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.util import stable_hash

if TYPE_CHECKING:
    from nas.data import TokenData
    from nas.derivation import Derivation, Importance
    from nas.distill import TeacherCache
    from nas.model import NasLM
    from nas.specs import ParentSpec, ProxyBudget

CALIBRATION_SEQ_LEN = 256  # tokens per calibration window (capped by the parent's context)


@dataclass(frozen=True)
class ParentRef:
    """What a worker needs of the parent: plain values, picklable, one copy per search."""

    fingerprint: str
    directory: str  # where it was read (for people; workers never open it)
    architecture: Architecture
    weights: bytes  # `nas.proxy.weights_to_bytes` of the parent
    importance: dict[str, Any]  # `nas.derivation.Importance.to_dict`
    depth: str  # how shallower candidates choose layers (`nas.specs.ParentSpec.depth`)
    # `nas.distill.TeacherCache.to_bytes` of the parent's top-k logits on the budget's batches;
    # None: every worker runs the parent on every batch (``teacher: worker``).
    teacher_cache: bytes | None = None
    # sha256 of teacher_cache, computed once where the cache is built: a worker keys its loaded
    # copy by it without hashing hundreds of MB per candidate.
    teacher_cache_digest: str = ""

    @property
    def loaded_key(self) -> tuple[str, str]:
        """What a worker's loaded copy is keyed by: the weights and the teacher cache."""
        return (self.fingerprint, self.teacher_cache_digest)

    def record(self) -> dict[str, Any]:
        """What the search row keeps of its parent (and what a resume compares)."""
        return {"path": self.directory, "fingerprint": self.fingerprint, "depth": self.depth,
                "architecture": self.architecture.to_dict(), "params": self.architecture.n_params,
                "teacher": "cache" if self.teacher_cache is not None else "worker"}

    def plan(self, arch: Architecture) -> Derivation:
        """How ``arch`` is derived from this parent, without building weights (the driver's
        record of every candidate, pruned and infeasible ones included)."""
        from nas.derivation import Importance, plan

        return plan(self.architecture, Importance.from_dict(self.importance), arch,
                    parent_id=self.fingerprint, depth=self.depth)


def fingerprint(arch: Architecture, weights: bytes) -> str:
    return stable_hash({"architecture": arch.to_dict(),
                        "weights": hashlib.sha256(weights).hexdigest()})


def load_parent(spec: ParentSpec, data: TokenData, budget: ProxyBudget, seed: int,
                threads: int = 1) -> ParentRef:
    """Read the parent at ``spec.path``, measure its importance on the first
    ``spec.calibration_tokens`` training tokens (the same for every run of a search) and, with
    ``teacher: cache``, compute its top-k logits on the batches ``budget`` and ``seed`` draw."""
    import torch

    from nas.checkpoint import read_checkpoint
    from nas.derive import parent_importance
    from nas.proxy import cpu_threads, weights_to_bytes

    checkpoint = read_checkpoint(spec.path)
    arch = checkpoint.architecture
    weights = weights_to_bytes(checkpoint.model)
    seq = min(CALIBRATION_SEQ_LEN, arch.max_seq_len)
    n = max(1, min(spec.calibration_tokens, len(data.train) - 1) // seq)
    tokens = torch.from_numpy(data.train[: n * seq].astype("int64")).reshape(n, seq)
    with cpu_threads(threads), torch.no_grad():
        importance = parent_importance(checkpoint.model, tokens)
    cache = None
    if spec.teacher == "cache" and budget.distill_weight > 0:
        from nas.distill import build_teacher_cache

        k = min(spec.teacher_top_k, arch.vocab_size)
        cache = build_teacher_cache(checkpoint.model, budget, data, seed=seed, k=k, device="cpu",
                                    threads=threads).to_bytes()
    return ParentRef(fingerprint(arch, weights), spec.path, arch, weights, importance.to_dict(),
                     spec.depth, cache, "" if cache is None else hashlib.sha256(cache).hexdigest())


# fingerprint -> (parent model, importance, teacher cache): one parent per worker process at a
# time (a worker serves one search; a second parent replaces the first, not doubling memory).
_LOADED: dict[tuple[str, str], tuple[NasLM, Importance, TeacherCache | None]] = {}


def _loaded(ref: ParentRef) -> tuple[NasLM, Importance, TeacherCache | None]:
    key = ref.loaded_key
    if key not in _LOADED:
        from nas.derivation import Importance
        from nas.distill import TeacherCache
        from nas.proxy import weights_from_bytes

        _LOADED.clear()
        model = weights_from_bytes(ref.architecture, ref.weights).eval()
        for param in model.parameters():
            param.requires_grad_(False)  # a teacher and a weight source: never trained
        cache = None if ref.teacher_cache is None else TeacherCache.from_bytes(ref.teacher_cache)
        _LOADED[key] = (model, Importance.from_dict(ref.importance), cache)
    return _LOADED[key]


def parent_model(ref: ParentRef) -> NasLM:
    """The parent, rebuilt once per worker process (cached by its fingerprint)."""
    return _loaded(ref)[0]


def teacher(ref: ParentRef) -> dict[str, Any]:
    """`nas.proxy.train`'s teacher argument: the cached top-k logits, or the parent itself."""
    model, _importance, cache = _loaded(ref)
    return {"teacher_cache": cache} if cache is not None else {"teacher": model}


def derived_start(ref: ParentRef, arch: Architecture) -> tuple[NasLM, Derivation]:
    """A candidate's initial weights, taken from the parent, and how they were taken."""
    from nas.derive import derive

    model, importance, _cache = _loaded(ref)
    return derive(model, importance, arch, parent_id=ref.fingerprint, depth=ref.depth)


def open_parent(spec: ParentSpec | None, data: TokenData, budget: ProxyBudget, seed: int,
                stored: dict[str, Any] | None, search: str, threads: int = 1) -> ParentRef | None:
    """The search's parent, checked against the one a resumed search started with: a resume
    must derive from the same weights, or its candidates would not be comparable."""
    from nas.errors import SearchError

    if spec is None:
        return None
    ref = load_parent(spec, data, budget, seed, threads)
    if stored is not None and stored.get("fingerprint") != ref.fingerprint:
        raise SearchError(f"search {search!r} was started from a parent with fingerprint "
                          f"{stored.get('fingerprint')} ({stored.get('path')}); {spec.path} now "
                          f"holds fingerprint {ref.fingerprint} (other weights): restore the "
                          "parent's files, or use another --name")
    return ref
