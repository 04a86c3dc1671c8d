"""Search spaces: a YAML file -> `SearchSpace` -> valid `Architecture` candidates.

The schema is documented at the top of ``search_spaces/tiny.yaml``. In short, a space names
how each `Architecture` field is chosen (a fixed value, ``{choices: [...]}`` or an integer
``{range: [lo, hi], step: k}``), the objectives and constraints, the hardware profiles, the
proxy budget, the data, the sampler and the default number of trials.

This module is the only place Optuna parameter names live (`SearchSpace.suggest`). Every
candidate it produces is valid by construction: choices that depend on another field use a
parameter name that carries the parent's value (``n_head|d_model=96``), so each Optuna
parameter name always has one fixed distribution, as Optuna requires.

Optuna is imported inside the functions that need it, so loading a space stays fast.

How the driver reports constraints (Optuna >= 5)
------------------------------------------------
Optuna 5 stores constraints on the trial itself (``trial.set_constraint(key, value)``, read
back as ``trial.constraints``); the samplers' ``constraints_func`` argument is deprecated
(FutureWarning) and not used here. TPE, NSGA-II and ``study.best_trials`` all read
``trial.constraints``, and a complete trial without any counts as feasible. So, per candidate,
with ``trial = study.ask()`` and ``arch = space.suggest(trial)``:

1. If ``space.check_static(arch)`` is non-empty the candidate can never be feasible: skip
   training, record ``space.constraint_dict(static_metrics(arch), partial=True)`` (metrics not
   measured count as 0, i.e. not known to be violated) and
   ``study.tell(trial, state=TrialState.PRUNED)``. Without the constraints TPE files it with
   the feasible pruned trials; with them it ranks it among the infeasible ones, by total
   violation. NSGA-II looks at complete trials only and simply ignores it.
2. Otherwise evaluate, merge ``static_metrics(arch)``, ``val_loss`` and the latency metrics
   into one ``metrics`` dict, record the constraints, then
   ``study.tell(trial, space.objective_values(metrics))``.
3. A failed evaluation is ``study.tell(trial, state=TrialState.FAIL)``, no constraints.

"Record" is ``space.record_constraints(trial, metrics, partial=...)`` with the live `Trial`, or
``space.store_constraints(study, trial_number, metrics, partial=...)`` (built on the
module-level `store_constraint_values`) for a driver that tells by trial number, e.g. after
a restart. Either way it must happen *before* ``study.tell``: a finished trial cannot be
updated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np
import yaml

from nas.architecture import ATTENTION_KINDS, STATIC_METRICS, Architecture, static_metrics
from nas.errors import ConfigError, SearchError
from nas.pareto import Objective
from nas.specs import DataSpec, ProxyBudget

if TYPE_CHECKING:
    import optuna

    from nas.hardware import HardwareProfile

# Fields in the order they are chosen: parents before the fields that depend on them.
SAMPLED_FIELDS: tuple[str, ...] = (
    "n_layer", "d_model", "n_head", "n_kv_head", "ffn_mult", "attention", "window", "sharing",
    "tie_embeddings", "max_seq_len",
)
_INT_FIELDS = frozenset({"n_layer", "d_model", "n_head", "n_kv_head", "window", "max_seq_len"})
_TOP_KEYS = ("name", "description", "seed", "trials", "sampler", "profiles", "objectives",
             "constraints", "budget", "data", "architecture")
_LATENCY_RE = re.compile(r"^latency:([^:]+):(decode_ms|prefill_ms)$")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_CONSTRAINT_RE = re.compile(r"^\s*(\S+?)\s*(<=|>=|<|>|==|=)\s*(\S+)\s*$")
_SHARING_RE = re.compile(r"^(none|all|repeat:(\d+))$")
_MAX_RANGE_VALUES = 10_000
FEASIBILITY_SAMPLES = 2_000
ENUMERATION_LIMIT = 100_000  # raw combinations a space may have for its size to be counted
# Sampler options a space may set, with a check for each value.
_SAMPLER_OPTIONS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "tpe": {"n_startup_trials": lambda v: _is_int(v) and v >= 0,
            "n_ei_candidates": lambda v: _is_int(v) and v >= 1,
            "constant_liar": lambda v: isinstance(v, bool)},
    "nsga2": {"population_size": lambda v: _is_int(v) and v >= 2,
              "mutation_prob": lambda v: v is None or (_is_num(v) and 0 <= v <= 1),
              "crossover_prob": lambda v: _is_num(v) and 0 <= v <= 1,
              "swapping_prob": lambda v: _is_num(v) and 0 <= v <= 1},
    "random": {},
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(x: float) -> str:
    """Short but lossless text for a number: 5000000.0 -> '5000000', 0.25 -> '0.25'."""
    short = f"{x:.12g}"
    return short if float(short) == x else repr(x)


class _Err:
    """Raises ConfigErrors that read ``source: key=value reason``."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def __call__(self, key: str, value: Any, reason: str) -> ConfigError:
        return ConfigError(f"{key}={value!r} {reason}", source=self.source, field=key, value=value)

    def unknown(self, section: str, key: Any, value: Any, known: Sequence[str]) -> ConfigError:
        where = f"{section}.{key}" if section else str(key)
        return ConfigError(f"unknown key {where!r}={value!r} (known: {', '.join(known)})",
                           source=self.source, field=where, value=value)


# ----- building blocks -------------------------------------------------------------------
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
class Constraint:
    """``metric <= bound`` or ``metric >= bound``."""

    metric: str
    op: Literal["<=", ">="]
    bound: float

    @property
    def text(self) -> str:
        """Canonical form, e.g. ``params <= 5000000``; also the Optuna constraint key."""
        return f"{self.metric} {self.op} {_fmt(self.bound)}"

    @property
    def is_static(self) -> bool:
        """Computable from the shape alone, so checkable before any training."""
        return self.metric in STATIC_METRICS

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is satisfied. Scaled by |bound| (when non-zero) so that
        violations of constraints in different units add up sensibly in the samplers'
        total-violation ranking. NaN is an infinite violation."""
        if value is None or math.isnan(value):
            return math.inf
        scale = abs(self.bound) or 1.0
        diff = value - self.bound if self.op == "<=" else self.bound - value
        return diff / scale

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SamplerSpec:
    """Which Optuna sampler and its options (defaults resolved at load, see `_parse_sampler`)."""

    name: Literal["tpe", "nsga2", "random"] = "tpe"
    options: tuple[tuple[str, Any], ...] = ()

    def to_yaml(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}


Picker = Callable[[str, ParamSpec | tuple], Any]


# ----- the space ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with `load_space`, `from_yaml_text` or `from_dict`."""

    name: str
    architecture: Mapping[str, ParamSpec]  # the sampled fields; vocab_size comes from data
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    profiles: tuple[str, ...] = ()
    budget: ProxyBudget = ProxyBudget()
    data: DataSpec = DataSpec()
    sampler: SamplerSpec = SamplerSpec()
    seed: int = 0
    trials: int = 20
    description: str = ""
    source: str | None = field(default=None, compare=False)
    # Conditional choice tables: {parent value: valid child values}, built in __post_init__.
    _heads: Mapping[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _kv: Mapping[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _sharing: Mapping[int, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _build_tables(self)

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str | None = None,
                  default_name: str = "space") -> SearchSpace:
        """Validate a parsed YAML mapping (or a `to_dict` snapshot) into a space."""
        return _parse(data, source, default_name)

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<yaml>") -> SearchSpace:
        """For YAML sent over the API; ``source`` names it in error messages."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"not valid YAML: {err}", source=source) from None
        stem = Path(source).stem if source and not source.startswith("<") else "space"
        return _parse(data, source, stem)

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
            "data": self.data.to_dict(),
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
        canonical = json.dumps(snap, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        """Every candidate's vocabulary: set by ``data.tokenizer``, never searched."""
        return self.data.vocab_size

    # ----- objectives and constraints ----------------------------------------------------
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
        missing = [o.metric for o in self.objectives if o.metric not in metrics]
        if missing:
            raise SearchError(f"metrics lack objective(s) {', '.join(missing)} "
                              f"(have: {', '.join(sorted(metrics))})")
        return [float(metrics[o.metric]) for o in self.objectives]

    @property
    def static_constraints(self) -> tuple[Constraint, ...]:
        return tuple(c for c in self.constraints if c.is_static)

    def static_violations(self, arch: Architecture) -> dict[str, float]:
        """Violated shape-only constraints: ``{constraint text: scaled violation > 0}``."""
        if not self.static_constraints:
            return {}
        metrics = static_metrics(arch)
        out = {}
        for c in self.static_constraints:
            v = c.violation(metrics[c.metric])
            if v > 0:
                out[c.text] = v
        return out

    def check_static(self, arch: Architecture) -> list[str]:
        """Human-readable reasons ``arch`` can never be feasible; ``[]`` when none."""
        if not self.static_constraints:
            return []
        metrics = static_metrics(arch)
        return [f"{c.metric}={_fmt(metrics[c.metric])} violates {c.text}"
                for c in self.static_constraints if c.violation(metrics[c.metric]) > 0]

    def constraint_dict(self, metrics: Mapping[str, float],
                        partial: bool = False) -> dict[str, float]:
        """``{constraint text: value}`` in Optuna's convention (<= 0 feasible), see
        `Constraint.violation`. With ``partial`` a missing metric gives 0.0 (not known to be
        violated), for candidates rejected before they were measured."""
        out = {}
        for c in self.constraints:
            if c.metric in metrics:
                out[c.text] = c.violation(float(metrics[c.metric]))
            elif partial:
                out[c.text] = 0.0
            else:
                raise SearchError(f"metrics lack {c.metric!r} needed by constraint {c.text!r}")
        return out

    def constraint_values(self, metrics: Mapping[str, float], partial: bool = False) -> list[float]:
        """All constraints, in the space's order, in Optuna's convention (<= 0 feasible)."""
        return list(self.constraint_dict(metrics, partial).values())

    def record_constraints(self, trial: optuna.trial.Trial, metrics: Mapping[str, float],
                           partial: bool = False) -> list[float]:
        """Store every constraint on a running trial (Optuna 5 ``set_constraint``); call it
        before ``study.tell``. Returns the values in the space's order."""
        if not hasattr(trial, "set_constraint"):
            raise SearchError("constrained search needs optuna>=5 (Trial.set_constraint)")
        values = self.constraint_dict(metrics, partial)
        for key, value in values.items():
            trial.set_constraint(key, value)
        return list(values.values())

    def store_constraints(self, study: optuna.Study, trial_number: int,
                          metrics: Mapping[str, float], partial: bool = False) -> list[float]:
        """`record_constraints` for a trial known only by its number (see
        `store_constraint_values`)."""
        values = self.constraint_dict(metrics, partial)
        store_constraint_values(study, trial_number, values)
        return list(values.values())

    def is_feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(v <= 0 for v in self.constraint_values(metrics))

    # ----- sampling ----------------------------------------------------------------------
    def _choose(self, pick: Picker) -> Architecture:
        """The one sampling procedure: ``pick(optuna name, spec or child values)``."""
        a = self.architecture
        n_layer = pick("n_layer", a["n_layer"])
        d_model = pick("d_model", a["d_model"])
        n_head = pick(f"n_head|d_model={d_model}", self._heads[d_model])
        n_kv_head = pick(f"n_kv_head|n_head={n_head}", self._kv[n_head])
        ffn_mult = pick("ffn_mult", a["ffn_mult"])
        attention = pick("attention", a["attention"])
        # `window` exists only for sliding-window attention: its name never needs a parent.
        window = pick("window", a["window"]) if attention == "sliding_window" else None
        sharing = pick(f"sharing|n_layer={n_layer}", self._sharing[n_layer])
        return Architecture(
            n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=n_kv_head,
            ffn_mult=ffn_mult, attention=attention, window=window, sharing=sharing,
            tie_embeddings=pick("tie_embeddings", a["tie_embeddings"]),
            vocab_size=self.data.vocab_size, max_seq_len=pick("max_seq_len", a["max_seq_len"]),
        )

    def suggest(self, trial: optuna.trial.BaseTrial) -> Architecture:
        """Ask ``trial`` (a live `Trial`, or a `FixedTrial` built from `params_for`) for a
        candidate. Fields with a single possible value are not suggested at all."""

        def pick(name: str, spec: ParamSpec | tuple) -> Any:
            values = spec.values if isinstance(spec, ParamSpec) else spec
            if len(values) == 1:
                return values[0]
            if isinstance(spec, ParamSpec) and spec.kind == "range":
                return trial.suggest_int(name, spec.low, spec.high, step=spec.step)
            return trial.suggest_categorical(name, list(values))

        return self._choose(pick)

    def sample_random(self, rng: np.random.Generator) -> Architecture:
        """A uniformly drawn candidate (every choice uniform given its parents), no Optuna."""

        def pick(name: str, spec: ParamSpec | tuple) -> Any:
            values = spec.values if isinstance(spec, ParamSpec) else spec
            return values[int(rng.integers(len(values)))] if len(values) > 1 else values[0]

        return self._choose(pick)

    def params_for(self, arch: Architecture) -> dict[str, Any]:
        """The Optuna parameters that make `suggest` return ``arch``: for
        ``study.enqueue_trial`` (seeding a search with a known architecture). Raises
        ConfigError when ``arch`` is not in this space."""
        params: dict[str, Any] = {}

        def pick(name: str, spec: ParamSpec | tuple) -> Any:
            values = spec.values if isinstance(spec, ParamSpec) else spec
            key = name.split("|", 1)[0]
            value = getattr(arch, key)
            if value not in values or type(value) is not type(values[values.index(value)]):
                raise ConfigError(f"{key}={value!r} is not in space {self.name!r} "
                                  f"(allowed here: {list(values)})",
                                  source=self.source, field=key, value=value)
            if len(values) > 1:
                params[name] = value
            return value

        rebuilt = self._choose(pick)
        if rebuilt != arch:
            raise ConfigError(f"vocab_size={arch.vocab_size} does not match "
                              f"data.tokenizer={self.data.tokenizer!r} of space {self.name!r}",
                              source=self.source, field="vocab_size", value=arch.vocab_size)
        return params

    def distinct_architectures(self, limit: int = ENUMERATION_LIMIT) -> list[Architecture] | None:
        """Every distinct architecture of the space that meets the shape-only constraints, or
        None when the space has more than ``limit`` raw combinations (too many to list).

        A trial budget counts distinct architectures, so a small discrete space caps it: the
        driver runs ``min(trials, len(...))``. The walk visits each choice path of `_choose`
        once (depth first), so conditional fields are counted exactly as they are sampled.
        """
        bound = math.prod(len(spec.values) for spec in self.architecture.values())
        if bound > limit:
            return None
        found: dict[str, Architecture] = {}
        path: list[int] = []
        while True:
            sizes: list[int] = []

            def pick(name: str, spec: ParamSpec | tuple) -> Any:
                values = spec.values if isinstance(spec, ParamSpec) else spec
                index = path[len(sizes)] if len(sizes) < len(path) else 0
                sizes.append(len(values))
                return values[index]

            try:
                arch = self._choose(pick)
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
        """Refuse profiles whose shapes need more positions than a candidate holds.

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


def _build_tables(space: SearchSpace) -> None:
    err = _Err(space.source)
    a = space.architecture
    heads, kv_spec = a["n_head"].values, a["n_kv_head"].values

    kv: dict[int, tuple[int, ...]] = {}
    for h in heads:
        # n_kv_head == "n_head" (left out of the YAML) means plain multi-head attention.
        kv[h] = (h,) if kv_spec == ("n_head",) else tuple(k for k in kv_spec if h % k == 0)
    head_table = {d: tuple(h for h in heads if _valid_head(d, h) and kv[h])
                  for d in a["d_model"].values}
    for d, hs in head_table.items():
        if not hs:
            raise err("architecture.d_model", d,
                      f"admits no n_head in {list(heads)}: n_head must divide d_model with an "
                      f"even head_dim (and have an n_kv_head in {list(kv_spec)} dividing it)")
    used_heads = {h for hs in head_table.values() for h in hs}
    for h in heads:
        if h not in used_heads:
            reason = (f"never fits: no d_model in {list(a['d_model'].values)} gives an even "
                      f"head_dim" if kv[h] else f"has no n_kv_head in {list(kv_spec)} dividing it")
            raise err("architecture.n_head", h, reason)
    if kv_spec != ("n_head",):
        used_kv = {k for h in used_heads for k in kv[h]}
        for k in kv_spec:
            if k not in used_kv:
                raise err("architecture.n_kv_head", k,
                          f"divides none of the usable n_head values {sorted(used_heads)}")

    sharing_table: dict[int, tuple[str, ...]] = {}
    for n_layer in a["n_layer"].values:
        seen: dict[int, str] = {}
        for s in a["sharing"].values:
            r = _repeat_of(s, n_layer)
            if r is not None and r not in seen:  # one spelling per distinct model
                seen[r] = s
        if not seen:
            raise err("architecture.n_layer", n_layer,
                      f"admits no sharing in {list(a['sharing'].values)} (repeat:k needs k to "
                      f"divide n_layer)")
        sharing_table[n_layer] = tuple(seen.values())
    used_sharing = {s for ss in sharing_table.values() for s in ss}
    for s in a["sharing"].values:
        if not any(_repeat_of(s, n) is not None for n in a["n_layer"].values):
            raise err("architecture.sharing", s,
                      f"fits no n_layer in {list(a['n_layer'].values)}")
        if s not in used_sharing:
            raise err("architecture.sharing", s,
                      "always duplicates an earlier choice (e.g. 'all' equals 'repeat:k' when "
                      "n_layer == k)")
    object.__setattr__(space, "_heads", head_table)
    object.__setattr__(space, "_kv", kv)
    object.__setattr__(space, "_sharing", sharing_table)


# ----- parsing -----------------------------------------------------------------------------
def _parse(data: Any, source: str | None, default_name: str) -> SearchSpace:
    err = _Err(source)
    if not isinstance(data, Mapping):
        raise ConfigError(f"a search space must be a mapping, got {type(data).__name__}",
                          source=source, value=data)
    for key in data:
        if key not in _TOP_KEYS:
            raise err.unknown("", key, data[key], _TOP_KEYS)

    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise err("name", name, "must be a non-empty string")
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        raise err("description", description, "must be a string")
    seed = data.get("seed", 0)
    if not _is_int(seed):
        raise err("seed", seed, "must be an integer")
    trials = data.get("trials", 20)
    if not _is_int(trials) or trials < 1:
        raise err("trials", trials, "must be a positive integer")

    profiles = _parse_profiles(data.get("profiles", []), err)
    budget = _section(ProxyBudget, data.get("budget", {}), "budget", source, err)
    data_spec = _section(DataSpec, data.get("data", {}), "data", source, err)
    objectives = _parse_objectives(data.get("objectives"), profiles, err)
    constraints = _parse_constraints(data.get("constraints", []), profiles, err)
    sampler = _parse_sampler(data.get("sampler", "tpe"), trials, err)
    architecture = _parse_architecture(data.get("architecture", {}), data_spec, budget, err)

    space = SearchSpace(name=name, architecture=architecture, objectives=objectives,
                        constraints=constraints, profiles=profiles, budget=budget,
                        data=data_spec, sampler=sampler, seed=seed, trials=trials,
                        description=description, source=source)
    _check_feasible(space, err)
    return space


def _section(cls: Any, value: Any, key: str, source: str | None, err: _Err) -> Any:
    if not isinstance(value, Mapping):
        raise err(key, value, "must be a mapping")
    known = [f.name for f in dataclasses.fields(cls)]
    for k in value:  # checked here too, so that the message shows the value
        if k not in known:
            raise err.unknown(key, k, value[k], known)
    try:
        return cls.from_dict(value, source=source)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # e.g. a list where a number belongs
        raise err(key, dict(value), f"is malformed: {exc}") from None


def _parse_profiles(value: Any, err: _Err) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise err("profiles", value, "must be a list of hardware profile names")
    for p in value:
        if not isinstance(p, str) or not _PROFILE_RE.match(p):
            raise err("profiles", p, "must be a profile name (letters, digits, '_', '.', '-')")
    if len(set(value)) != len(value):
        raise err("profiles", value, "lists a profile twice")
    return tuple(value)


def _check_metric(metric: str, profiles: tuple[str, ...], key: str, err: _Err,
                  shown: Any = None) -> None:
    """``shown`` is the value the message quotes (a constraint's whole text)."""
    shown = metric if shown is None else shown
    if metric == "val_loss" or metric in STATIC_METRICS:
        return
    m = _LATENCY_RE.match(metric)
    if m:
        if m.group(1) not in profiles:
            raise err(key, shown, f"names profile {m.group(1)!r}, which is not in "
                                  f"profiles={list(profiles)}")
        return
    known = ["val_loss", *STATIC_METRICS, "latency:<profile>:decode_ms",
             "latency:<profile>:prefill_ms"]
    raise err(key, shown, f"names unknown metric {metric!r} (known: {', '.join(known)})")


def _parse_objectives(value: Any, profiles: tuple[str, ...], err: _Err) -> tuple[Objective, ...]:
    if value is None:
        raise err("objectives", value, "is required, e.g. {val_loss: min}")
    items: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if isinstance(entry, Mapping) and len(entry) == 1:
                items.append(next(iter(entry.items())))
            elif isinstance(entry, str) and ":" in entry:
                metric, _, direction = entry.rpartition(":")
                items.append((metric, direction))
            else:
                raise err("objectives", entry, "must be 'metric:min|max' or {metric: min|max}")
    else:
        raise err("objectives", value, "must be a mapping {metric: min|max}")
    if not items:
        raise err("objectives", value, "must name at least one metric")
    objectives = []
    for metric, direction in items:
        if not isinstance(metric, str):
            raise err("objectives", metric, "must be a metric name")
        key = f"objectives.{metric}"
        _check_metric(metric, profiles, key, err)
        if not isinstance(direction, str) or direction.lower() not in ("min", "max"):
            raise err(key, direction, "must be 'min' or 'max'")
        objectives.append(Objective(metric, direction.lower()))  # type: ignore[arg-type]
    names = [o.metric for o in objectives]
    if len(set(names)) != len(names):
        raise err("objectives", names, "names a metric twice")
    return tuple(objectives)


def _parse_constraints(value: Any, profiles: tuple[str, ...],
                       err: _Err) -> tuple[Constraint, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise err("constraints", value, "must be a list like ['params <= 5e6']")
    out = []
    for i, text in enumerate(value):
        key = f"constraints[{i}]"
        m = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if not m:
            raise err(key, text, "must look like 'metric <= number' or 'metric >= number'")
        metric, op, number = m.groups()
        if op not in ("<=", ">="):
            raise err(key, text, f"uses {op!r}; only '<=' and '>=' are supported")
        try:
            bound = float(number)
        except ValueError:
            raise err(key, text, f"has bound {number!r}, which is not a number") from None
        if not math.isfinite(bound):
            raise err(key, text, "needs a finite bound")
        _check_metric(metric, profiles, key, err, shown=text)
        out.append(Constraint(metric, op, bound))  # type: ignore[arg-type]
    texts = [c.text for c in out]
    if len(set(texts)) != len(texts):
        raise err("constraints", value, "lists a constraint twice")
    return tuple(out)


def _parse_sampler(value: Any, trials: int, err: _Err) -> SamplerSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise err("sampler", value, "must be 'tpe', 'nsga2', 'random' or {name: ..., options}")
    name = value.get("name", "tpe")
    if name not in _SAMPLER_OPTIONS:
        raise err("sampler.name", name, f"must be one of {', '.join(_SAMPLER_OPTIONS)}")
    known = _SAMPLER_OPTIONS[name]
    options = {}
    for key, option in value.items():
        if key == "name":
            continue
        if key not in known:
            raise err.unknown("sampler", key, option, ["name", *known])
        if not known[key](option):
            raise err(f"sampler.{key}", option, f"is not a valid {key} for {name}")
        options[key] = option
    # Optuna's defaults assume hundreds of trials; scale the warm-up to this space's budget.
    if name == "tpe":
        options.setdefault("n_startup_trials", min(10, max(4, trials // 3)))
    elif name == "nsga2":
        options.setdefault("population_size", min(50, max(4, trials // 4)))
    return SamplerSpec(name, tuple(sorted(options.items())))


def _parse_value(fname: str, value: Any, key: str, err: _Err) -> Any:
    """Check one candidate value of an `Architecture` field; returns its canonical form."""
    if fname in _INT_FIELDS:
        if not _is_int(value) or value < 1:
            raise err(key, value, "must be a positive integer")
    elif fname == "ffn_mult":
        if not _is_num(value) or not math.isfinite(value) or value <= 0:
            raise err(key, value, "must be a positive number")
        return float(value)
    elif fname == "attention":
        if value not in ATTENTION_KINDS:
            raise err(key, value, f"must be one of {', '.join(ATTENTION_KINDS)}")
    elif fname == "sharing":
        m = _SHARING_RE.match(value) if isinstance(value, str) else None
        if not m or (m.group(2) is not None and int(m.group(2)) < 2):
            raise err(key, value, "must be 'none', 'all' or 'repeat:k' with k >= 2")
    elif fname == "tie_embeddings":
        if not isinstance(value, bool):
            raise err(key, value, "must be true or false")
    return value


def _parse_spec(fname: str, value: Any, err: _Err) -> ParamSpec:
    key = f"architecture.{fname}"
    if isinstance(value, list):
        raise err(key, value, "is a bare list; write {choices: [...]} to search over it")
    if not isinstance(value, Mapping):
        return ParamSpec("fixed", (_parse_value(fname, value, key, err),))
    for k in value:
        if k not in ("choices", "range", "step"):
            raise err.unknown(key, k, value[k], ["choices", "range", "step"])
    if ("choices" in value) == ("range" in value):
        raise err(key, dict(value), "must have exactly one of 'choices' or 'range'")
    if "choices" in value:
        choices = value["choices"]
        if "step" in value:
            raise err(f"{key}.step", value["step"], "only goes with 'range'")
        if not isinstance(choices, list):
            raise err(f"{key}.choices", choices, "must be a list")
        if not choices:
            raise err(f"{key}.choices", choices, "must not be empty")
        parsed = [_parse_value(fname, c, f"{key}.choices", err) for c in choices]
        if len(set(parsed)) != len(parsed):
            raise err(f"{key}.choices", choices, "lists a value twice")
        return ParamSpec("choices", tuple(parsed))
    if fname not in _INT_FIELDS:
        raise err(f"{key}.range", value["range"], f"is only for integer fields; {fname} "
                                                  f"takes {{choices: [...]}}")
    bounds, step = value["range"], value.get("step", 1)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(_is_int(b) for b in bounds)):
        raise err(f"{key}.range", bounds, "must be [lo, hi] with integers")
    lo, hi = bounds
    if lo < 1:
        raise err(f"{key}.range", bounds, "must start at >= 1")
    if lo > hi:
        raise err(f"{key}.range", bounds, f"has lo={lo} > hi={hi}")
    if not _is_int(step) or step < 1:
        raise err(f"{key}.step", step, "must be a positive integer")
    if (hi - lo) % step:
        raise err(f"{key}.step", step, f"must divide hi - lo = {hi - lo} (range {bounds})")
    if (hi - lo) // step + 1 > _MAX_RANGE_VALUES:
        raise err(f"{key}.range", bounds, f"has more than {_MAX_RANGE_VALUES} values; "
                                          "use a larger step")
    return ParamSpec("range", tuple(range(lo, hi + 1, step)), step)


def _parse_architecture(value: Any, data: DataSpec, budget: ProxyBudget,
                        err: _Err) -> dict[str, ParamSpec]:
    if not isinstance(value, Mapping):
        raise err("architecture", value, "must be a mapping of Architecture fields")
    known = [f.name for f in dataclasses.fields(Architecture)]
    for key in value:
        if key not in known:
            raise err.unknown("architecture", key, value[key], known)
    if "vocab_size" in value:
        v = value["vocab_size"]
        if v != data.vocab_size or not _is_int(v):
            raise err("architecture.vocab_size", v,
                      f"conflicts with data.tokenizer={data.tokenizer!r} (vocab "
                      f"{data.vocab_size}); leave it out, it is set from the tokenizer")

    defaults = Architecture()
    specs: dict[str, ParamSpec] = {}
    for fname in SAMPLED_FIELDS:
        if fname in value and value[fname] is not None:
            specs[fname] = _parse_spec(fname, value[fname], err)
        elif fname == "n_kv_head":
            specs[fname] = ParamSpec("fixed", ("n_head",))  # multi-head unless told otherwise
        elif fname == "window":
            specs[fname] = ParamSpec("fixed", (None,))
        else:
            specs[fname] = ParamSpec("fixed", (getattr(defaults, fname),))

    sliding = "sliding_window" in specs["attention"].values
    has_window = specs["window"].values != (None,)
    if sliding and not has_window:
        raise err("architecture.window", None,
                  "must be given when attention can be 'sliding_window'")
    if has_window and not sliding:
        raise err("architecture.window", specs["window"].to_yaml(),
                  f"is only used with attention='sliding_window' (attention: "
                  f"{list(specs['attention'].values)})")
    shortest = min(specs["max_seq_len"].values)
    if budget.seq_len > shortest:
        raise err("budget.seq_len", budget.seq_len,
                  f"exceeds architecture.max_seq_len={shortest}")
    return specs


def _check_feasible(space: SearchSpace, err: _Err) -> None:
    """Reject a space where no random candidate meets the static constraints."""
    static = space.static_constraints
    if not static:
        return
    rng = np.random.default_rng(space.seed)
    best: dict[Constraint, float] = {}  # per constraint: the value closest to satisfying it
    alone: set[Constraint] = set()  # constraints some candidate met on their own
    for _ in range(FEASIBILITY_SAMPLES):
        metrics = static_metrics(space.sample_random(rng))
        ok = True
        for c in static:
            value = metrics[c.metric]
            if c.violation(value) <= 0:
                alone.add(c)
            else:
                ok = False
            if c not in best or c.violation(value) < c.violation(best[c]):
                best[c] = value
        if ok:
            return
    blame = [c for c in static if c not in alone] or list(static)
    seen = "; ".join(f"{'smallest' if c.op == '<=' else 'largest'} {c.metric} seen: "
                     f"{_fmt(best[c])}" for c in blame)
    together = "" if len(blame) < len(static) or len(static) == 1 else " together"
    raise err("constraints", [c.text for c in blame],
              f"cannot be met{together}: no candidate among {FEASIBILITY_SAMPLES} random "
              f"ones does ({seen})")


# ----- files -------------------------------------------------------------------------------
def _spaces_dirs() -> list[Path]:
    """``search_spaces/`` of the repository (found by walking up from this file), then a copy
    shipped inside the package (``nas/builtin/search_spaces``) if one exists."""
    here = Path(__file__).resolve().parent
    dirs = [p / "search_spaces" for p in here.parents if (p / "search_spaces").is_dir()][:1]
    builtin = here / "builtin" / "search_spaces"
    if builtin.is_dir():
        dirs.append(builtin)
    return dirs


def list_spaces() -> list[str]:
    """Names of the project's search spaces (``search_spaces/<name>.yaml``)."""
    names = {p.stem for d in _spaces_dirs() for p in d.glob("*.yaml")}
    return sorted(names)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A bare name (``tiny``) is ``search_spaces/<name>.yaml`` of the project; anything with a
    path separator or a ``.yaml``/``.yml`` suffix, or an existing file, is read as a path."""
    text_name = str(name_or_path)
    as_path = Path(name_or_path)
    is_path = (isinstance(name_or_path, Path) or "/" in text_name or "\\" in text_name
               or as_path.suffix in (".yaml", ".yml") or as_path.is_file())
    if is_path:
        path = as_path
    else:
        candidates = [d / f"{text_name}.yaml" for d in _spaces_dirs()]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise ConfigError(f"space={text_name!r} is not a known search space (known: "
                              f"{', '.join(list_spaces()) or 'none'}) nor a file",
                              field="space", value=text_name)
        path = found[0]
    source = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read search space: {exc.strerror or exc}", source=source,
                          field="space", value=text_name) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
    return _parse(data, source, path.stem)


def _display(path: Path) -> str:
    """The path as the user would recognise it: relative to the cwd when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----- Optuna ------------------------------------------------------------------------------
def store_constraint_values(study: optuna.Study, trial_number: int,
                            values: Mapping[str, float] | Sequence[float]) -> None:
    """Record constraint values (Optuna's convention, <= 0 feasible) on a *running* trial known
    by its number, as a driver that asks in one place and tells later has it. Call it before
    ``study.tell(trial_number, ...)``: a finished trial cannot be updated.

    It writes what ``Trial.set_constraint`` writes (system attribute ``constraints:<key>``)
    without building a `Trial`, whose constructor would run the sampler's ``before_trial``
    again. Keys are the mapping's keys (pass `SearchSpace.constraint_dict` for readable ones),
    or ``"0"``, ``"1"``, ... for a sequence, the names Optuna gives its legacy list format.
    """
    items = (values.items() if isinstance(values, Mapping)
             else ((str(i), v) for i, v in enumerate(values)))
    storage = study._storage  # noqa: SLF001 - what study.tell(trial_number) itself uses
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number)  # noqa: SLF001
    for key, value in items:
        value = float(value)
        if math.isnan(value):
            raise SearchError(f"constraint {key!r} of trial {trial_number} is NaN")
        storage.set_trial_system_attr(trial_id, f"constraints:{key}", value)


def trial_seed(space_seed: int, trial_number: int) -> int:
    """The sampler seed for one ask: a function of the space's seed and the trial's position.

    Seeding per ask (not once per run) is what lets a resumed or extended search continue the
    random stream: trial n draws with the same seed whether or not the driver was restarted
    before it, instead of replaying the first draws of the stream.
    """
    digest = hashlib.sha256(f"{space_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded with ``seed`` (default ``space.seed``).

    ``tpe``: multivariate TPE with ``group=True`` (conditional parameters are modelled per
    group of co-occurring names) and constant liar (parallel asks avoid each other).
    ``nsga2``: NSGA-II. ``random``: uniform. None is given a ``constraints_func``: in Optuna 5
    every sampler reads the constraints the driver stored with `SearchSpace.record_constraints`.
    """
    import optuna

    options = dict(space.sampler.options)
    seed = space.seed if seed is None else seed
    with warnings.catch_warnings():
        # `group` is marked experimental; it is what makes conditional spaces work well.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if space.sampler.name == "tpe":
            options.setdefault("constant_liar", True)
            return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed,
                                              **options)
        if space.sampler.name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **options)
    return optuna.samplers.RandomSampler(seed=seed)


__all__ = [
    "Constraint", "Objective", "ParamSpec", "SamplerSpec", "SearchSpace", "list_spaces",
    "load_space", "make_sampler", "store_constraint_values", "trial_seed",
]
