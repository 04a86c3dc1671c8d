"""A search space's YAML schema -> `SearchSpace`, every error naming file, key and value.

The schema is documented at the top of ``search_spaces/tiny.yaml``: how each `Architecture`
field is chosen (a fixed value, ``{choices: [...]}`` or an integer ``{range: [lo, hi], step:
k}``), the objectives and constraints (parsed by `nas.objectives`), the hardware profiles, the
proxy budget, the data, the sampler and the default number of trials.

A listed field value is checked by `nas.architecture.check_field`, the rule `Architecture`
itself applies, and its error is re-raised under the YAML key that holds it
(``bad.yaml: architecture.d_model.choices='wide' must be an integer``). What is checked here
is only what YAML adds: the shape of a spec, ranges, and a space that cannot be met.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nas.architecture import Architecture, check_field, static_metrics
from nas.errors import ArchitectureError, ConfigError
from nas.fidelity import parse_fidelity
from nas.objectives import (
    Constraint,
    config_error,
    format_number,
    parse_constraints,
    parse_objectives,
)
from nas.space.model import SAMPLED_FIELDS, ParamSpec, SamplerSpec, SearchSpace
from nas.space.parent import check_within_parent, parent_architecture, parent_data, parse_parent
from nas.specs import DataSpec, ProxyBudget

_INT_FIELDS = frozenset({"n_layer", "d_model", "n_head", "n_kv_head", "window", "max_seq_len"})
_TOP_KEYS = ("name", "description", "seed", "trials", "sampler", "profiles", "objectives",
             "constraints", "budget", "fidelity", "data", "parent", "architecture")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MAX_RANGE_VALUES = 10_000
FEASIBILITY_SAMPLES = 2_000


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Sampler options a space may set, with a check for each value.
_SAMPLER_OPTIONS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "tpe": {"n_startup_trials": lambda v: _is_int(v) and v >= 0,
            "n_ei_candidates": lambda v: _is_int(v) and v >= 1,
            "constant_liar": lambda v: isinstance(v, bool),
            "history": lambda v: _is_int(v) and v >= 1},
    "nsga2": {"population_size": lambda v: _is_int(v) and v >= 2,
              "mutation_prob": lambda v: v is None or (_is_num(v) and 0 <= v <= 1),
              "crossover_prob": lambda v: _is_num(v) and 0 <= v <= 1,
              "swapping_prob": lambda v: _is_num(v) and 0 <= v <= 1},
    "gp": {"n_startup_trials": lambda v: _is_int(v) and v >= 0,
           "deterministic_objective": lambda v: isinstance(v, bool),
           "history": lambda v: _is_int(v) and v >= 1},
    "random": {},
}


class _Err:
    """Raises ConfigErrors that read ``source: key=value reason``."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def __call__(self, key: str, value: Any, reason: str) -> ConfigError:
        return config_error(key, value, reason, self.source)

    def unknown(self, section: str, key: Any, value: Any, known: Sequence[str]) -> ConfigError:
        where = f"{section}.{key}" if section else str(key)
        return ConfigError(f"unknown key {where!r}={value!r} (known: {', '.join(known)})",
                           source=self.source, field=where, value=value)


def parse_yaml_text(text: str, source: str = "<yaml>", default_name: str | None = None) -> SearchSpace:
    """YAML text (a file's, or sent over the API) -> space; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", source=source) from None
    if default_name is None:
        default_name = Path(source).stem if source and not source.startswith("<") else "space"
    return parse_space(data, source, default_name)


def parse_space(data: Any, source: str | None, default_name: str) -> SearchSpace:
    """A parsed YAML mapping (or a `SearchSpace.to_dict` snapshot) -> a validated space."""
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
    fidelity = parse_fidelity(data.get("fidelity"), budget, source)
    parent = parse_parent(data.get("parent"), source)
    parent_arch = parent_architecture(parent, source) if parent is not None else None
    data_section = data.get("data", {})
    if parent is not None:
        data_section = parent_data(data_section, parent, source)
    data_spec = _section(DataSpec, data_section, "data", source, err)
    vocab_size = parent_arch.vocab_size if parent_arch is not None else data_spec.vocab_size
    objectives = parse_objectives(data.get("objectives"), profiles, source)
    constraints = parse_constraints(data.get("constraints", []), profiles, source)
    sampler = _parse_sampler(data.get("sampler", "tpe"), trials, err)
    architecture = _parse_architecture(data.get("architecture", {}), data_spec, vocab_size, budget, err)

    space = SearchSpace(name=name, architecture=architecture, objectives=objectives,
                        constraints=constraints, profiles=profiles, budget=budget, fidelity=fidelity,
                        data=data_spec, parent=parent, sampler=sampler, seed=seed, trials=trials,
                        description=description, source=source)
    if parent_arch is not None:
        check_within_parent(space, parent_arch)
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


def _parse_sampler(value: Any, trials: int, err: _Err) -> SamplerSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise err("sampler", value, "must be 'tpe', 'nsga2', 'gp', 'random' or {name: ..., options}")
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
    if name in ("tpe", "gp"):
        options.setdefault("n_startup_trials", min(10, max(4, trials // 3)))
    elif name == "nsga2":
        options.setdefault("population_size", min(50, max(4, trials // 4)))
    return SamplerSpec(name, tuple(sorted(options.items())))


def _parse_value(fname: str, value: Any, key: str, err: _Err) -> Any:
    """One listed value of an `Architecture` field, checked by Architecture's own rule;
    returns its canonical form."""
    if value is None:  # `window: null` alone means "no window"; in a list it is no value
        raise err(key, value, "is not a value; leave the field out for its default")
    try:
        return check_field(fname, value)
    except ArchitectureError as exc:
        reason = str(exc).removeprefix(f"{exc.field}={exc.value!r} ")
        raise err(key, value, reason) from None


def _parse_range(fname: str, value: Mapping[str, Any], key: str, err: _Err) -> ParamSpec:
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
    if "range" in value:
        return _parse_range(fname, value, key, err)
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


def _parse_architecture(value: Any, data: DataSpec, vocab_size: int, budget: ProxyBudget,
                        err: _Err) -> dict[str, ParamSpec]:
    if not isinstance(value, Mapping):
        raise err("architecture", value, "must be a mapping of Architecture fields")
    # The norm epsilon and rotary base are not searched: a parent's config sets them.
    known = [f.name for f in dataclasses.fields(Architecture)
             if f.name in SAMPLED_FIELDS or f.name == "vocab_size"]
    for key in value:
        if key not in known:
            raise err.unknown("architecture", key, value[key], known)
    if "vocab_size" in value:
        v = value["vocab_size"]
        if v != vocab_size or not _is_int(v):
            raise err("architecture.vocab_size", v,
                      f"conflicts with data.tokenizer={data.tokenizer!r} (vocab "
                      f"{vocab_size}); leave it out, it is set from the tokenizer")

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
    """Reject a space where no random candidate meets the static constraints: found when the
    space is loaded, before anything trains."""
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
                     f"{format_number(best[c])}" for c in blame)
    together = "" if len(blame) < len(static) or len(static) == 1 else " together"
    raise err("constraints", [c.text for c in blame],
              f"cannot be met{together}: no candidate among {FEASIBILITY_SAMPLES} random "
              f"ones does ({seen})")
