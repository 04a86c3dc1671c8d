"""The Optuna adapter: the only place Optuna parameter names live.

A choice that depends on another field gets a name carrying the parent's value
(``n_head|d_model=96``), so each Optuna parameter name always has one fixed distribution, as
Optuna requires. Fields with a single possible value are never suggested at all.

How the driver reports constraints (Optuna >= 5): ``trial.set_constraint(key, value)`` with
the keys and values of `SearchSpace.constraint_dict` (``partial=True`` for a candidate
rejected by `SearchSpace.check_static` before it was measured), before ``study.tell``: a
finished trial cannot be updated. TPE, NSGA-II and ``study.best_trials`` all read
``trial.constraints``; the samplers' deprecated ``constraints_func`` is not used. Recording
them is the search's job (`nas.search`), through public Optuna API only.

Optuna is imported inside the functions that need it, so loading a space stays fast.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.errors import ConfigError
from nas.space.model import ParamSpec, Parent, SearchSpace, values_of

if TYPE_CHECKING:
    import optuna


def param_name(field: str, parent: Parent) -> str:
    """``n_layer``, or ``n_head|d_model=96`` for a choice whose values depend on a parent."""
    return field if parent is None else f"{field}|{parent[0]}={parent[1]}"


def suggest(space: SearchSpace, trial: optuna.trial.BaseTrial) -> Architecture:
    """Ask ``trial`` (a live `Trial`, or a `FixedTrial` built from `params_for`) for a
    candidate of ``space``."""

    def pick(field: str, parent: Parent, spec: ParamSpec | tuple[Any, ...]) -> Any:
        values = values_of(spec)
        if len(values) == 1:
            return values[0]
        name = param_name(field, parent)
        if isinstance(spec, ParamSpec) and spec.kind == "range":
            return trial.suggest_int(name, spec.low, spec.high, step=spec.step)
        return trial.suggest_categorical(name, list(values))

    return space.choose(pick)


def params_for(space: SearchSpace, arch: Architecture) -> dict[str, Any]:
    """The Optuna parameters that make `suggest` return ``arch``: for ``study.enqueue_trial``
    (seeding a search with a known architecture). Raises ConfigError when ``arch`` is not in
    ``space``."""
    params: dict[str, Any] = {}

    def pick(field: str, parent: Parent, spec: ParamSpec | tuple[Any, ...]) -> Any:
        values = values_of(spec)
        value = getattr(arch, field)
        if value not in values or type(value) is not type(values[values.index(value)]):
            raise ConfigError(f"{field}={value!r} is not in space {space.name!r} "
                              f"(allowed here: {list(values)})",
                              source=space.source, field=field, value=value)
        if len(values) > 1:
            params[param_name(field, parent)] = value
        return value

    rebuilt = space.choose(pick)
    if rebuilt != arch:
        raise ConfigError(f"vocab_size={arch.vocab_size} does not match "
                          f"data.tokenizer={space.data.tokenizer!r} of space {space.name!r}",
                          source=space.source, field="vocab_size", value=arch.vocab_size)
    return params


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
    ``nsga2``: NSGA-II. ``gp``: Gaussian-process Bayesian optimisation (LogEHVI for several
    objectives, constraint-aware). ``random``: uniform. None is given a ``constraints_func``: in Optuna 5
    every sampler reads the constraints the driver recorded on each trial.
    ``history: N`` (tpe, gp): condition on the N latest finished trials only (`nas.space.history`).
    """
    options = dict(space.sampler.options)
    history = options.pop("history", None)
    sampler = _make(space.sampler.name, options, space.seed if seed is None else seed)
    if history is None:
        return sampler
    from nas.space.history import RecentHistorySampler

    return RecentHistorySampler(sampler, history)


def _make(name: str, options: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    with warnings.catch_warnings():
        # `group` is marked experimental; it is what makes conditional spaces work well.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            options.setdefault("constant_liar", True)
            return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed,
                                              **options)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **options)
        if name == "gp":
            # A categorical the GP cannot model falls back to random sampling; that is expected.
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, **options)
    return optuna.samplers.RandomSampler(seed=seed)
