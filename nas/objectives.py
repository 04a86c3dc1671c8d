"""Objective and constraint names: the one place that knows what a metric is called, how an
objective or a bound is written, and whether a candidate's metrics meet a bound.

A search space's ``objectives`` and ``constraints``, the constraints stored with a search (read
back by `nas.fronts`), ``nas export --where`` (`nas.pick`) and the driver's Optuna values all
go through here, so a bound means the same thing to every reader and is spelled one way
(`Constraint.text`, which is also the Optuna constraint key).

Known metrics: ``val_loss``, the shape-only metrics of `nas.architecture.static_metrics`
(checkable before any training), and the per-profile ones: ``latency:<profile>:decode_ms`` /
``prefill_ms``, and for a workload profile ``latency:<profile>:decode_ms@<context>`` /
``ttft_ms`` / ``generate_ms``, ``throughput:<profile>:tokens_per_s`` and
``memory:<profile>:peak_mb`` / ``estimate_mb`` (the convention is in `nas.hardware`). Whether a
given profile yields a workload metric is checked where a space meets its loaded profiles.

Pure Python on top of `nas.architecture`: no numpy, Optuna, torch, ray or onnxruntime, so the
CLI and the service can parse names without loading anything heavy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nas.architecture import STATIC_METRICS, Architecture, static_metrics
from nas.errors import ConfigError, SearchError

Direction = Literal["min", "max"]
Operator = Literal["<=", ">="]
DIRECTION_ALIASES: Mapping[str, Direction] = {"min": "min", "minimize": "min",
                                              "max": "max", "maximize": "max"}
# Every metric measured on a hardware profile: <kind>:<profile>:<quantity>.
PROFILE_METRIC_RE = re.compile(
    r"^(?:latency:([^:]+):(?:decode_ms|prefill_ms|ttft_ms|generate_ms|decode_ms@[1-9][0-9]*)"
    r"|throughput:([^:]+):tokens_per_s|memory:([^:]+):(?:peak_mb|estimate_mb))$")
KNOWN_METRICS: tuple[str, ...] = (
    "val_loss", *STATIC_METRICS, "latency:<profile>:decode_ms", "latency:<profile>:prefill_ms",
    "latency:<profile>:decode_ms@<context>", "latency:<profile>:ttft_ms",
    "latency:<profile>:generate_ms", "throughput:<profile>:tokens_per_s",
    "memory:<profile>:peak_mb", "memory:<profile>:estimate_mb")
TRAINED_METRICS: tuple[str, ...] = ("val_loss",)  # known only once a candidate has trained
# Any comparison is matched, so that a strict or equality operator gets its own message.
_CONSTRAINT_RE = re.compile(r"^\s*(\S+?)\s*(<=|>=|<|>|==|=)\s*(\S+)\s*$")


def format_number(x: float) -> str:
    """Short but lossless text for a number: 5000000.0 -> '5000000', 0.25 -> '0.25'."""
    short = f"{x:.12g}"
    return short if float(short) == x else repr(x)


def config_error(key: str, value: Any, reason: str, source: str | None = None) -> ConfigError:
    """The ``source: key=value reason`` error every space and constraint message uses."""
    return ConfigError(f"{key}={value!r} {reason}", source=source, field=key, value=value)


def latency_profile(metric: str) -> str | None:
    """The profile a ``latency:``/``throughput:``/``memory:<profile>:...`` metric is measured on;
    None for other metrics."""
    match = PROFILE_METRIC_RE.match(metric)
    return next(g for g in match.groups() if g) if match else None


def metric_problem(metric: str, profiles: Sequence[str]) -> str | None:
    """Why a search measuring ``profiles`` never produces ``metric``; None when it does."""
    if metric == "val_loss" or metric in STATIC_METRICS:
        return None
    profile = latency_profile(metric)
    if profile is not None:
        if profile not in profiles:
            return f"names profile {profile!r}, which is not in profiles={list(profiles)}"
        return None
    return f"names unknown metric {metric!r} (known: {', '.join(KNOWN_METRICS)})"


# ----- objectives -----------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """A named metric and whether lower (``min``) or higher (``max``) is better."""

    metric: str
    direction: Direction = "min"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ConfigError(f"objective metric={self.metric!r} must be a non-empty string",
                              field="objectives", value=self.metric)
        direction = (DIRECTION_ALIASES.get(self.direction.lower())
                     if isinstance(self.direction, str) else None)
        if direction is None:
            raise ConfigError(f"objectives.{self.metric}={self.direction!r} must be 'min' or 'max'",
                              field=f"objectives.{self.metric}", value=self.direction)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def parse(cls, spec: Any) -> Objective:
        """From ``"val_loss:min"``, ``{"val_loss": "min"}``, ``{"metric":..., "direction":...}``,
        a ``(metric, direction)`` pair or an `Objective`.

        The direction is split off the *last* colon, so ``"latency:cpu-1t:decode_ms:min"`` works.
        """
        if isinstance(spec, Objective):
            return spec
        if isinstance(spec, str):
            metric, sep, direction = spec.rpartition(":")
            if not sep or direction.lower() not in DIRECTION_ALIASES:
                raise ConfigError(f"objective={spec!r} must look like 'metric:min' or 'metric:max'",
                                  field="objectives", value=spec)
            return cls(metric, direction)  # type: ignore[arg-type]
        if isinstance(spec, Mapping):
            if set(spec) == {"metric", "direction"}:
                return cls(spec["metric"], spec["direction"])
            if len(spec) == 1:
                ((metric, direction),) = spec.items()
                return cls(metric, direction)
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(spec[0], spec[1])
        raise ConfigError(f"objective={spec!r} must be 'metric:min|max' or {{metric: min|max}}",
                          field="objectives", value=spec)

    @property
    def sign(self) -> float:
        """Multiplier that turns the metric into a loss (lower is better)."""
        return 1.0 if self.direction == "min" else -1.0

    @property
    def optuna_direction(self) -> str:
        return "minimize" if self.direction == "min" else "maximize"

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"


def parse_objectives(value: Any, profiles: Sequence[str],
                     source: str | None = None) -> tuple[Objective, ...]:
    """A space's ``objectives`` section: ``{metric: min|max}`` or a list of ``metric:min``
    entries / one-key mappings. A space spells directions ``min``/``max`` only (the long
    Optuna spellings `Objective` also accepts are for code, not files)."""
    if value is None:
        raise config_error("objectives", value, "is required, e.g. {val_loss: min}", source)
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
                raise config_error("objectives", entry,
                                   "must be 'metric:min|max' or {metric: min|max}", source)
    else:
        raise config_error("objectives", value, "must be a mapping {metric: min|max}", source)
    if not items:
        raise config_error("objectives", value, "must name at least one metric", source)
    objectives = []
    for metric, direction in items:
        if not isinstance(metric, str):
            raise config_error("objectives", metric, "must be a metric name", source)
        key = f"objectives.{metric}"
        problem = metric_problem(metric, profiles)
        if problem:
            raise config_error(key, metric, problem, source)
        if not isinstance(direction, str) or direction.lower() not in ("min", "max"):
            raise config_error(key, direction, "must be 'min' or 'max'", source)
        objectives.append(Objective(metric, direction.lower()))  # type: ignore[arg-type]
    names = [o.metric for o in objectives]
    if len(set(names)) != len(names):
        raise config_error("objectives", names, "names a metric twice", source)
    return tuple(objectives)


def objective_values(objectives: Sequence[Objective], metrics: Mapping[str, float]) -> list[float]:
    """The values to ``study.tell``, in objective order."""
    missing = [o.metric for o in objectives if o.metric not in metrics]
    if missing:
        raise SearchError(f"metrics lack objective(s) {', '.join(missing)} "
                          f"(have: {', '.join(sorted(metrics))})")
    return [float(metrics[o.metric]) for o in objectives]


# ----- constraints ----------------------------------------------------------------------
@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound``."""

    metric: str
    op: Operator
    bound: float

    @classmethod
    def parse(cls, text: Any) -> Constraint:
        """``"params <= 5e6"`` (spaces optional). A ConfigError's message is the reason alone
        (``uses '<'; only ...``), for the caller to prefix with where the text came from."""
        match = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if not match:
            raise ConfigError("must look like 'metric <= number' or 'metric >= number'", value=text)
        metric, op, number = match.groups()
        if op not in ("<=", ">="):
            raise ConfigError(f"uses {op!r}; only '<=' and '>=' are supported", value=text)
        try:
            bound = float(number)
        except ValueError:
            raise ConfigError(f"has bound {number!r}, which is not a number", value=text) from None
        if not math.isfinite(bound):
            raise ConfigError("needs a finite bound", value=text)
        return cls(metric, op, bound)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        """Canonical form, e.g. ``params <= 5000000``; also the Optuna constraint key."""
        return f"{self.metric} {self.op} {format_number(self.bound)}"

    @property
    def is_static(self) -> bool:
        """Computable from the shape alone, so checkable before any training."""
        return self.metric in STATIC_METRICS

    @property
    def needs_training(self) -> bool:
        """Decided only after training (``val_loss``); every other bound is decided by the
        shape step (size, memory, latency of the untrained model), before any training."""
        return self.metric in TRAINED_METRICS

    def violation(self, value: float | None) -> float:
        """Optuna's convention: <= 0 is satisfied. Scaled by |bound| (when non-zero) so that
        violations of constraints in different units add up sensibly in the samplers'
        total-violation ranking. NaN (or no value) is an infinite violation."""
        if value is None or math.isnan(value):
            return math.inf
        scale = abs(self.bound) or 1.0
        diff = value - self.bound if self.op == "<=" else self.bound - value
        return diff / scale

    def __str__(self) -> str:
        return self.text


def parse_constraints(value: Any, profiles: Sequence[str],
                      source: str | None = None) -> tuple[Constraint, ...]:
    """A space's ``constraints`` section: a list of bounds on metrics it measures."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise config_error("constraints", value, "must be a list like ['params <= 5e6']", source)
    out = []
    for i, text in enumerate(value):
        key = f"constraints[{i}]"
        try:
            constraint = Constraint.parse(text)
        except ConfigError as err:
            raise config_error(key, text, str(err), source) from None
        problem = metric_problem(constraint.metric, profiles)
        if problem:
            raise config_error(key, text, problem, source)
        out.append(constraint)
    texts = [c.text for c in out]
    if len(set(texts)) != len(texts):
        raise config_error("constraints", value, "lists a constraint twice", source)
    return tuple(out)


def constraint_dict(constraints: Sequence[Constraint], metrics: Mapping[str, float],
                    partial: bool = False) -> dict[str, float]:
    """``{constraint text: value}`` in Optuna's convention (<= 0 feasible), see
    `Constraint.violation`. With ``partial`` a missing metric gives 0.0 (not known to be
    violated), for candidates rejected before they were measured."""
    out = {}
    for c in constraints:
        if c.metric in metrics:
            out[c.text] = c.violation(float(metrics[c.metric]))
        elif partial:
            out[c.text] = 0.0
        else:
            raise SearchError(f"metrics lack {c.metric!r} needed by constraint {c.text!r}")
    return out


def is_feasible(constraints: Sequence[Constraint], metrics: Mapping[str, float],
                partial: bool = False) -> bool:
    """Whether ``metrics`` meet every constraint (``partial``: see `constraint_dict`)."""
    return all(v <= 0 for v in constraint_dict(constraints, metrics, partial).values())


def check_static(constraints: Sequence[Constraint], arch: Architecture) -> list[str]:
    """Human-readable reasons ``arch`` can never be feasible; ``[]`` when none."""
    static = [c for c in constraints if c.is_static]
    if not static:
        return []
    metrics = static_metrics(arch)
    return [f"{c.metric}={format_number(metrics[c.metric])} violates {c.text}"
            for c in static if c.violation(metrics[c.metric]) > 0]


def shape_violations(constraints: Sequence[Constraint], metrics: Mapping[str, float]) -> list[str]:
    """The constraints that need no training which ``metrics`` (static metrics and measured
    latencies) break, each with its value, e.g. ``latency:cpu-1t:decode_ms <= 0.05 (measured
    0.081)``; ``[]`` when none. A constraint whose metric is missing is not known to be broken."""
    out = []
    for c in constraints:
        if c.needs_training or c.metric not in metrics:
            continue
        value = float(metrics[c.metric])
        if c.violation(value) > 0:
            out.append(f"{c.text} (measured {value:.4g})")
    return out


__all__ = [
    "DIRECTION_ALIASES", "KNOWN_METRICS", "PROFILE_METRIC_RE", "Constraint", "Direction", "Objective",
    "check_static", "config_error", "constraint_dict", "format_number", "is_feasible",
    "latency_profile", "metric_problem", "objective_values", "parse_constraints",
    "parse_objectives", "shape_violations", "TRAINED_METRICS",
]
