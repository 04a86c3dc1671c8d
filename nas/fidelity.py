"""Multi-fidelity training: the rungs of a token budget and who goes on to the next one.

A space's ``fidelity: {min_tokens, eta}`` block splits ``budget.tokens`` into rungs
``tokens / eta**k`` (k = K..0, the smallest at least ``min_tokens``), each ending on a whole
optimizer step: 31,250 / 125,000 / 500,000 tokens for ``min_tokens: 31250, eta: 4`` and a
500k budget. Without the block (or with ``--no-fidelity``) there is one rung, the whole budget.

Promotion is decided when a candidate *arrives* at a rung, against the candidates that reached
that rung before it (asynchronous successive halving, as Optuna's SuccessiveHalvingPruner), so
a worker never waits for a rung to fill, and a decision is never revisited: a candidate that
is not promoted is pruned at once and its checkpoint can be dropped. Optuna cannot prune
multi-objective studies (``Trial.report`` raises for more than one direction), so the driver
decides with `promotes` and tells Optuna ``PRUNED``.

The ranking is NSGA-II's on the search's own objectives, with ``val_loss`` at its rung value:
first the non-dominated front (a dominated candidate changes the final front only if its loss
falls further than its rival's), then crowding distance within the front (the extremes, the
fastest and the lowest loss, always go on; the trade-off stays spread). Latency and size are
exact from the shape step; only the loss is provisional. A candidate goes on when fewer than
``max(1, n // eta)`` of the n arrivals rank strictly above it, so tied candidates go on together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.pareto import Standing, crowding_distance
from nas.specs import ProxyBudget


@dataclass(frozen=True)
class Fidelity:
    """Successive-halving settings: the first rung's size and the factor between rungs."""

    min_tokens: int
    eta: int

    def to_dict(self) -> dict[str, int]:
        return {"min_tokens": self.min_tokens, "eta": self.eta}


def parse_fidelity(value: Any, budget: ProxyBudget, source: str | None) -> Fidelity | None:
    """The ``fidelity`` block of a space file; every bad value names the file, key and value."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"fidelity={value!r} must be a mapping like {{min_tokens: 31250, eta: 4}}",
                          source=source, field="fidelity", value=value)
    unknown = sorted(set(value) - {"min_tokens", "eta"})
    if unknown:
        raise ConfigError(f"unknown key fidelity.{unknown[0]}; known: min_tokens, eta",
                          source=source, field=f"fidelity.{unknown[0]}", value=value[unknown[0]])
    for key in ("min_tokens", "eta"):
        if key not in value:
            raise ConfigError(f"fidelity.{key} is required", source=source, field=f"fidelity.{key}")
        if isinstance(value[key], bool) or not isinstance(value[key], int):
            raise ConfigError(f"fidelity.{key}={value[key]!r} must be an integer", source=source,
                              field=f"fidelity.{key}", value=value[key])
    fidelity = Fidelity(min_tokens=value["min_tokens"], eta=value["eta"])
    check_fidelity(fidelity, budget, source)
    return fidelity


def check_fidelity(fidelity: Fidelity, budget: ProxyBudget, source: str | None = None) -> None:
    if fidelity.eta < 2:
        raise ConfigError(f"fidelity.eta={fidelity.eta} must be at least 2 (the factor between rungs)",
                          source=source, field="fidelity.eta", value=fidelity.eta)
    if fidelity.min_tokens >= budget.tokens:
        raise ConfigError(
            f"fidelity.min_tokens={fidelity.min_tokens} must be below budget.tokens={budget.tokens} "
            "(the last rung is the whole budget)", source=source, field="fidelity.min_tokens",
            value=fidelity.min_tokens)
    per_step = budget.batch_size * budget.seq_len
    if fidelity.min_tokens < per_step:
        raise ConfigError(
            f"fidelity.min_tokens={fidelity.min_tokens} is less than one batch "
            f"(budget.batch_size x budget.seq_len = {per_step} tokens)", source=source,
            field="fidelity.min_tokens", value=fidelity.min_tokens)
    steps = rung_steps(fidelity, budget)
    if len(steps) < 2:
        raise ConfigError(
            f"fidelity.min_tokens={fidelity.min_tokens} with eta={fidelity.eta} leaves one rung: "
            f"budget.tokens / eta = {budget.tokens / fidelity.eta:,.0f} is below min_tokens",
            source=source, field="fidelity.min_tokens", value=fidelity.min_tokens)
    if len(set(steps)) != len(steps):
        raise ConfigError(
            f"fidelity rungs {list(steps)} (optimizer steps) are not distinct: "
            f"raise fidelity.min_tokens={fidelity.min_tokens} or lower budget.batch_size x seq_len",
            source=source, field="fidelity.min_tokens", value=fidelity.min_tokens)


def rung_steps(fidelity: Fidelity | None, budget: ProxyBudget) -> tuple[int, ...]:
    """Optimizer steps at the end of each rung, ascending; the last is ``budget.steps``."""
    total = budget.steps
    if fidelity is None:
        return (total,)
    per_step = budget.batch_size * budget.seq_len
    steps = []
    k = 0
    while budget.tokens / fidelity.eta ** k >= fidelity.min_tokens:
        steps.append(max(1, math.floor(budget.tokens / fidelity.eta ** k / per_step)))
        k += 1
    steps[0] = total
    return tuple(reversed(steps))


def rung_tokens(fidelity: Fidelity | None, budget: ProxyBudget) -> tuple[int, ...]:
    """Training tokens at the end of each rung."""
    per_step = budget.batch_size * budget.seq_len
    return tuple(s * per_step for s in rung_steps(fidelity, budget))


def promotes(standing: Standing, arrivals: int, eta: int) -> bool:
    """Whether a candidate goes on to the next rung, given where it landed among the candidates
    that reached the rung before it (``standing``, from `GrowingFronts.add`) and how many have
    arrived there, itself included (``arrivals``).

    Fewer than ``max(1, n // eta)`` of the n arrivals may rank strictly above it: in a better
    non-dominated front, or in its front with a larger crowding distance. The first ``eta - 1``
    arrivals thus go on only when nothing ranks above them (Optuna's rule for its first trials).
    `GrowingFronts` keeps the earlier arrivals' fronts, so a decision costs O(n) vector work and
    sorts only the arrival's own front (BENCHMARKS.md, "Many workers through one driver").
    """
    allowed = max(1, arrivals // eta)  # fewer than this many may rank above it
    better, peers = standing
    if better >= allowed:
        return False
    if better + len(peers) - 1 < allowed:  # even its whole front cannot outnumber the allowance
        return True
    crowding = crowding_distance(peers, ["min"] * peers.shape[1])  # peers are loss rows
    return better + int(np.sum(crowding > crowding[-1])) < allowed
