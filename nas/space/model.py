"""The search-space model: which values each `Architecture` field may take, what the search
optimises and bounds, and the one procedure that walks those choices.

Every candidate is valid by construction: a choice that depends on another field (``n_head``
on ``d_model``, ``n_kv_head`` on ``n_head``, ``sharing`` on ``n_layer``) is drawn from a table
of the child values that fit the parent's value, built once when the space is made. `choose`
is the only walk over the fields; Optuna (`nas.space.adapter`), the uniform sampler, the
size count and the membership test all drive it with their own ``pick``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nas import objectives
from nas.architecture import Architecture
from nas.errors import ConfigError
from nas.fidelity import Fidelity
from nas.objectives import Constraint, Objective, config_error
from nas.specs import DataSpec, ParentSpec, ProxyBudget
from nas.util import stable_hash

if TYPE_CHECKING:
    import optuna

    from nas.hardware import HardwareProfile

# Fields in the order they are chosen: parents before the fields that depend on them.
SAMPLED_FIELDS: tuple[str, ...] = (
    "n_layer", "d_model", "n_head", "n_kv_head", "ffn_mult", "attention", "window", "sharing",
    "tie_embeddings", "max_seq_len",
)
ENUMERATION_LIMIT = 100_000  # raw combinations a space may have for its size to be counted


@dataclass(frozen=True)
class ParamSpec:
    """How one `Architecture` field is chosen."""

    kind: Literal["fixed", "choices", "range"]
    values: tuple[Any, ...]  # every allowed value, in order (a range expanded)
    step: int = 1  # only for ranges

    @property
    def low(self) -> Any:
        return self.values[0]

    @property
    def high(self) -> Any:
        return self.values[-1]

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "range":
            return {"range": [self.low, self.high], "step": self.step}
        return {"choices": list(self.values)}


@dataclass(frozen=True)
class SamplerSpec:
    """Which Optuna sampler and its options (defaults resolved at load, see
    `nas.space.parse`)."""

    name: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    options: tuple[tuple[str, Any], ...] = ()

    def to_yaml(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}


# pick(field, (parent field, parent value) or None, spec or the parent-dependent values)
Parent = tuple[str, Any] | None
Picker = Callable[[str, Parent, "ParamSpec | tuple[Any, ...]"], Any]


def values_of(spec: ParamSpec | tuple[Any, ...]) -> tuple[Any, ...]:
    """The values a ``pick`` may return, for a field's spec or a conditional table entry."""
    return spec.values if isinstance(spec, ParamSpec) else spec


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with `load_space`, `from_yaml_text` or `from_dict`."""

    name: str
    architecture: Mapping[str, ParamSpec]  # the sampled fields; vocab_size comes from data
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    profiles: tuple[str, ...] = ()
    budget: ProxyBudget = ProxyBudget()
    fidelity: Fidelity | None = None  # successive-halving rungs (`nas.fidelity`); None: one rung
    data: DataSpec = DataSpec()
    parent: ParentSpec | None = None  # derive candidates from this checkpoint (`nas.space.parent`)
    sampler: SamplerSpec = SamplerSpec()
    seed: int = 0
    trials: int = 20
    description: str = ""
    source: str | None = field(default=None, compare=False)
    # Conditional choice tables: {parent value: valid child values}, built in __post_init__.
    _heads: Mapping[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _kv: Mapping[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _sharing: Mapping[int, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    # The parent's shape (its config.json), read once: candidates take its vocab and constants.
    _parent_arch: Architecture | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _build_tables(self)
        arch = None
        if self.parent is not None:
            from nas.space.parent import parent_architecture

            arch = parent_architecture(self.parent, self.source)
        object.__setattr__(self, "_parent_arch", arch)

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str | None = None,
                  default_name: str = "space") -> SearchSpace:
        """Validate a parsed YAML mapping (or a `to_dict` snapshot) into a space."""
        from nas.space.parse import parse_space

        return parse_space(data, source, default_name)

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<yaml>") -> SearchSpace:
        """For YAML sent over the API; ``source`` names it in error messages."""
        from nas.space.parse import parse_yaml_text

        return parse_yaml_text(text, source)

    # ----- snapshot and identity ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The space in the YAML schema, every default resolved; ``from_dict`` reads it back."""
        # The implicit defaults (n_kv_head = n_head, no window) have no YAML spelling.
        arch = {name: spec.to_yaml() for name, spec in self.architecture.items()
                if spec.values not in (("n_head",), (None,))}
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "trials": self.trials,
            "sampler": self.sampler.to_yaml(),
            "profiles": list(self.profiles),
            "objectives": {o.metric: o.direction for o in self.objectives},
            "constraints": [c.text for c in self.constraints],
            "budget": self.budget.to_dict(),
            # Left out when unset, so a space without rungs keeps the hash it always had.
            **({"fidelity": self.fidelity.to_dict()} if self.fidelity is not None else {}),
            "data": self.data.to_dict(),
            **({"parent": self.parent.to_dict()} if self.parent is not None else {}),
            "architecture": arch,
        }

    @property
    def hash(self) -> str:
        """Stable "same space" check for resume: sha256 of the canonical snapshot, leaving out
        ``name``, ``description`` and ``trials`` (how long to search is not what to search;
        the sampler options derived from ``trials`` are included, resolved)."""
        snap = self.to_dict()
        for key in ("name", "description", "trials"):
            snap.pop(key)
        # Objective order is the order of Optuna's values: keep it out of sort_keys' reach.
        snap["objectives"] = [str(o) for o in self.objectives]
        return stable_hash(snap)

    @property
    def vocab_size(self) -> int:
        """Every candidate's vocabulary: the parent's, or set by ``data.tokenizer``; never searched."""
        if self._parent_arch is not None:
            return self._parent_arch.vocab_size
        return self.data.vocab_size

    def check_tokenizer(self, ids: int) -> None:
        """The prepared data's tokenizer fits every candidate's vocabulary: exactly, or, from a
        parent, within it (a parent's embedding may have more rows than its tokenizer has ids)."""
        if ids > self.vocab_size or (self.parent is None and ids != self.vocab_size):
            raise ConfigError(f"the tokenizer gives vocab_size={ids} but the space fixes "
                              f"{self.vocab_size}", source=self.source, field="vocab_size",
                              value=self.vocab_size)

    @property
    def parent_architecture(self) -> Architecture | None:
        """The parent's architecture (from its config), or None for a search from scratch."""
        return self._parent_arch

    def heads_for(self, d_model: int) -> tuple[int, ...]:
        """The n_head values the space allows with this d_model."""
        return self._heads[d_model]

    # ----- objectives and constraints (evaluated by `nas.objectives`) --------------------
    def metric_names(self) -> list[str]:
        """Every metric an objective or constraint names, objectives first, no repeats."""
        names = [o.metric for o in self.objectives] + [c.metric for c in self.constraints]
        return list(dict.fromkeys(names))

    def constraint_texts(self) -> list[str]:
        """Canonical constraint strings, e.g. ``params <= 5000000`` (also the Optuna keys)."""
        return [c.text for c in self.constraints]

    def objective_names(self) -> list[str]:
        """For ``study.set_metric_names``."""
        return [o.metric for o in self.objectives]

    def directions(self) -> list[str]:
        """For ``optuna.create_study(directions=...)``: ``"minimize"``/``"maximize"``."""
        return [o.optuna_direction for o in self.objectives]

    def objective_values(self, metrics: Mapping[str, float]) -> list[float]:
        """The values to ``study.tell``, in objective order."""
        return objectives.objective_values(self.objectives, metrics)

    @property
    def static_constraints(self) -> tuple[Constraint, ...]:
        return tuple(c for c in self.constraints if c.is_static)

    def check_static(self, arch: Architecture) -> list[str]:
        """Human-readable reasons ``arch`` can never be feasible; ``[]`` when none."""
        return objectives.check_static(self.constraints, arch)

    def constraint_dict(self, metrics: Mapping[str, float],
                        partial: bool = False) -> dict[str, float]:
        """``{constraint text: value}``, Optuna's convention (see `nas.objectives`)."""
        return objectives.constraint_dict(self.constraints, metrics, partial)

    def shape_violations(self, metrics: Mapping[str, float]) -> list[str]:
        """Constraints needing no training that the shape step's metrics break (see `nas.objectives`)."""
        return objectives.shape_violations(self.constraints, metrics)

    def is_feasible(self, metrics: Mapping[str, float]) -> bool:
        return objectives.is_feasible(self.constraints, metrics)

    # ----- sampling ----------------------------------------------------------------------
    def choose(self, pick: Picker) -> Architecture:
        """The one sampling procedure: ``pick(field, parent, spec or child values)``."""
        a = self.architecture
        n_layer = pick("n_layer", None, a["n_layer"])
        d_model = pick("d_model", None, a["d_model"])
        n_head = pick("n_head", ("d_model", d_model), self._heads[d_model])
        n_kv_head = pick("n_kv_head", ("n_head", n_head), self._kv[n_head])
        ffn_mult = pick("ffn_mult", None, a["ffn_mult"])
        attention = pick("attention", None, a["attention"])
        # `window` exists only for sliding-window attention: its name never needs a parent.
        window = pick("window", None, a["window"]) if attention == "sliding_window" else None
        sharing = pick("sharing", ("n_layer", n_layer), self._sharing[n_layer])
        return Architecture(
            n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=n_kv_head,
            ffn_mult=ffn_mult, attention=attention, window=window, sharing=sharing,
            tie_embeddings=pick("tie_embeddings", None, a["tie_embeddings"]),
            vocab_size=self.vocab_size,
            max_seq_len=pick("max_seq_len", None, a["max_seq_len"]),
            **self._constants(),
        )

    def _constants(self) -> dict[str, float]:
        """The parent's norm epsilon and rotary base: a derived candidate computes as it does."""
        parent = self._parent_arch
        return {} if parent is None else {"rms_norm_eps": parent.rms_norm_eps,
                                          "rope_theta": parent.rope_theta}

    def suggest(self, trial: optuna.trial.BaseTrial) -> Architecture:
        """Ask ``trial`` (a live `Trial`, or a `FixedTrial` built from `params_for`) for a
        candidate; see `nas.space.adapter.suggest`."""
        from nas.space.adapter import suggest

        return suggest(self, trial)

    def params_for(self, arch: Architecture) -> dict[str, Any]:
        """The Optuna parameters that make `suggest` return ``arch`` (ConfigError when
        ``arch`` is not in this space); see `nas.space.adapter.params_for`."""
        from nas.space.adapter import params_for

        return params_for(self, arch)

    def sample_random(self, rng: np.random.Generator) -> Architecture:
        """A uniformly drawn candidate (every choice uniform given its parents), no Optuna."""

        def pick(_field: str, _parent: Parent, spec: ParamSpec | tuple[Any, ...]) -> Any:
            values = values_of(spec)
            return values[int(rng.integers(len(values)))] if len(values) > 1 else values[0]

        return self.choose(pick)

    def distinct_architectures(self, limit: int = ENUMERATION_LIMIT) -> list[Architecture] | None:
        """Every distinct architecture of the space that meets the shape-only constraints, or
        None when the space has more than ``limit`` raw combinations (too many to list).

        A trial budget counts distinct architectures, so a small discrete space caps it: the
        driver runs ``min(trials, len(...))``. The walk visits each choice path of `choose`
        once (depth first), so conditional fields are counted exactly as they are sampled.
        """
        bound = math.prod(len(spec.values) for spec in self.architecture.values())
        if bound > limit:
            return None
        found: dict[str, Architecture] = {}
        path: list[int] = []
        while True:
            sizes: list[int] = []

            def pick(_field: str, _parent: Parent, spec: ParamSpec | tuple[Any, ...],
                     path: list[int] = path, sizes: list[int] = sizes) -> Any:
                values = values_of(spec)
                index = path[len(sizes)] if len(sizes) < len(path) else 0
                sizes.append(len(values))
                return values[index]

            try:
                arch: Architecture | None = self.choose(pick)
            except (ConfigError, ValueError):  # a combination Architecture itself refuses
                arch = None
            if arch is not None and not self.check_static(arch):
                found.setdefault(arch.hash, arch)
            path = path + [0] * (len(sizes) - len(path))
            last = max((i for i in range(len(sizes)) if path[i] + 1 < sizes[i]), default=-1)
            if last < 0:
                return list(found.values())
            path = path[:last] + [path[last] + 1]

    def check_profiles(self, profiles: Sequence[HardwareProfile]) -> None:
        """Refuse profiles whose shapes need more positions than a candidate holds, and
        objectives or constraints naming a workload metric their profile does not measure.

        Called wherever a space meets its profiles (`nas.search.resolve_profiles`), before
        anything is written: otherwise a 64-position model is timed on a 128-token prompt
        and exported with ``max_position_embeddings`` 64. The shortest choice must fit.
        """
        lengths = self.architecture["max_seq_len"].values
        shortest = min(lengths)
        note = " (its shortest choice)" if len(lengths) > 1 else ""
        for profile in profiles:
            profile.check_context(shortest, source=self.source, field="architecture.max_seq_len",
                                  note=note)
        measured = {p.name: p for p in profiles}
        named = [(f"objectives.{o.metric}", o.metric, o.metric) for o in self.objectives]
        named += [("constraints", c.metric, c.text) for c in self.constraints]
        for key, metric, text in named:
            profile = measured.get(objectives.latency_profile(metric) or "")
            if profile is not None and metric not in profile.metric_names():
                raise ConfigError(
                    f"{key}={text!r} is not measured by hardware profile {profile.name!r} "
                    f"(it measures: {', '.join(profile.metric_names())})",
                    source=self.source, field=key, value=text)

    def contains(self, arch: Architecture) -> bool:
        try:
            self.params_for(arch)
        except ConfigError:
            return False
        return True


# ----- conditional tables ------------------------------------------------------------------
def _valid_head(d_model: int, n_head: int) -> bool:
    return d_model % n_head == 0 and (d_model // n_head) % 2 == 0


def _repeat_of(sharing: str, n_layer: int) -> int | None:
    """Block applications per unique block, or None when invalid at this depth."""
    if sharing == "none":
        return 1
    if sharing == "all":
        return n_layer
    k = int(sharing.split(":", 1)[1])
    return k if n_layer % k == 0 else None


def _head_tables(space: SearchSpace) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """``({d_model: n_head values}, {n_head: n_kv_head values})``; a listed value that never
    fits is an error naming it, rather than a choice the sampler silently never makes."""
    a, source = space.architecture, space.source
    heads, kv_spec = a["n_head"].values, a["n_kv_head"].values
    kv: dict[int, tuple[int, ...]] = {}
    for h in heads:
        # n_kv_head == "n_head" (left out of the YAML) means plain multi-head attention.
        kv[h] = (h,) if kv_spec == ("n_head",) else tuple(k for k in kv_spec if h % k == 0)
    head_table = {d: tuple(h for h in heads if _valid_head(d, h) and kv[h])
                  for d in a["d_model"].values}
    for d, hs in head_table.items():
        if not hs:
            raise config_error("architecture.d_model", d,
                               f"admits no n_head in {list(heads)}: n_head must divide d_model with "
                               f"an even head_dim (and have an n_kv_head in {list(kv_spec)} dividing "
                               f"it)", source)
    used_heads = {h for hs in head_table.values() for h in hs}
    for h in heads:
        if h not in used_heads:
            reason = (f"never fits: no d_model in {list(a['d_model'].values)} gives an even "
                      f"head_dim" if kv[h] else f"has no n_kv_head in {list(kv_spec)} dividing it")
            raise config_error("architecture.n_head", h, reason, source)
    if kv_spec != ("n_head",):
        used_kv = {k for h in used_heads for k in kv[h]}
        for k in kv_spec:
            if k not in used_kv:
                raise config_error("architecture.n_kv_head", k,
                                   f"divides none of the usable n_head values {sorted(used_heads)}",
                                   source)
    return head_table, kv


def _sharing_table(space: SearchSpace) -> dict[int, tuple[str, ...]]:
    """``{n_layer: sharing values}``, one spelling per distinct model at that depth."""
    a, source = space.architecture, space.source
    table: dict[int, tuple[str, ...]] = {}
    for n_layer in a["n_layer"].values:
        seen: dict[int, str] = {}
        for s in a["sharing"].values:
            r = _repeat_of(s, n_layer)
            if r is not None and r not in seen:
                seen[r] = s
        if not seen:
            raise config_error("architecture.n_layer", n_layer,
                               f"admits no sharing in {list(a['sharing'].values)} (repeat:k needs k "
                               f"to divide n_layer)", source)
        table[n_layer] = tuple(seen.values())
    used = {s for ss in table.values() for s in ss}
    for s in a["sharing"].values:
        if not any(_repeat_of(s, n) is not None for n in a["n_layer"].values):
            raise config_error("architecture.sharing", s,
                               f"fits no n_layer in {list(a['n_layer'].values)}", source)
        if s not in used:
            raise config_error("architecture.sharing", s,
                               "always duplicates an earlier choice (e.g. 'all' equals 'repeat:k' "
                               "when n_layer == k)", source)
    return table


def _build_tables(space: SearchSpace) -> None:
    heads, kv = _head_tables(space)
    object.__setattr__(space, "_heads", heads)
    object.__setattr__(space, "_kv", kv)
    object.__setattr__(space, "_sharing", _sharing_table(space))
