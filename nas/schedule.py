"""Learning-rate schedules of the proxy run, and the cooldown branch that scores a WSD rung.

Cosine to the end of the budget is the default. Warmup-stable-decay keeps the rate flat, so a
rung can be scored as if its run ended there by a short decay on a branch (Hägele et al.
2024), at ``cooldown_frac`` x the rung's steps more. It was built to fix early rungs that rank
poorly under cosine, and measured not to (BENCHMARKS.md, "The rung schedule": 15-60k tokens
rank alike under both, and a shorter warm-up does not help either), though it ends ~0.08 nats
lower at the same budget; so it stays an option (``budget.schedule: wsd``), not the default.
"""

from __future__ import annotations

import math

from nas.specs import ProxyBudget


def lr_schedule(budget: ProxyBudget, steps: int) -> list[float]:
    """Linear warm-up over ``warmup_frac`` of the steps, then the budget's schedule: cosine to
    ``lr * min_lr_frac``, or (``wsd``) ``lr`` until the last ``cooldown_frac`` of the steps
    and a linear decay to ``lr * min_lr_frac`` over them."""
    warmup = round(budget.warmup_frac * steps)
    decay_from = steps - max(1, round(budget.cooldown_frac * steps))
    lrs = []
    for step in range(steps):
        if step < warmup:
            lrs.append(budget.lr * (step + 1) / warmup)
        elif budget.schedule == "wsd":
            lrs.append(budget.lr if step < decay_from else
                       decayed(budget, budget.lr, step - decay_from + 1, steps - decay_from))
        else:
            done = (step - warmup) / max(1, steps - warmup - 1)
            scale = budget.min_lr_frac + (1 - budget.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * done))
            lrs.append(budget.lr * scale)
    return lrs


def decayed(budget: ProxyBudget, lr: float, step: int, steps: int) -> float:
    """Step ``step`` (1-based) of a linear decay from ``lr`` to ``lr * min_lr_frac``."""
    return lr * (1 - (1 - budget.min_lr_frac) * step / steps)


def cooldown_steps(budget: ProxyBudget, stop: int) -> int:
    """Steps of the cooldown branch that scores a WSD rung ending at ``stop`` (0: none)."""
    if budget.schedule != "wsd" or stop >= budget.steps:
        return 0
    return min(max(1, round(budget.cooldown_frac * stop)), budget.steps - stop)
