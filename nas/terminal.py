"""Rich and Typer plumbing for the `nas` command line: consoles, tables, progress displays.

Output that is piped or redirected is read by programs (``nas ls | grep finished``) and
copied from logs, so it is never cut to the terminal's width: no ellipses, and a URL or a
command is never broken across lines. A terminal gets Rich's usual fitting tables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand, TyperGroup, TyperOption

UNLIMITED_WIDTH = 100_000  # "no limit" for Rich, which needs a number; tables take what they need
UNRESOLVED_MARK = "≈"  # a value whose order against another front member is not resolved
# Per candidate id: metric -> its 95% interval [low, high] (re-timed measurements only), and
# the members its order is not resolved against ({"id", "trial_number", "metric"} each).
Intervals = Mapping[int, Mapping[str, Sequence[float]]]
Unresolved = Mapping[int, Sequence[Mapping[str, Any]]]


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr) as it is now: a terminal, or a pipe with no width limit."""
    stream = sys.stderr if stderr else sys.stdout
    if _is_terminal(stream):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNLIMITED_WIDTH, soft_wrap=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def table(console: Console, *columns: str, title: str | None = None,
          right: tuple[str, ...] = ()) -> Table:
    """A table whose cells are never truncated when the console is not a terminal."""
    # Piped, the console is unlimited (`make_console`), so nothing is ever folded or cut; a
    # terminal folds long cells onto more lines rather than ending them with an ellipsis.
    grid = Table(title=title)
    for name in columns:
        grid.add_column(name, justify="right" if name in right else "left",
                        no_wrap=not console.is_terminal, overflow="fold")
    return grid


def searches_table(console: Console, searches: list[Any]) -> Table:
    """`nas ls`: one row per `SearchSummary`."""
    counts = ("done", "failed", "pruned", "infeasible", "running", "trials", "front")
    grid = table(console, "name", "status", *counts, "hypervolume", "created", right=(*counts, "hypervolume"))
    for s in searches:
        grid.add_row(s.name, s.status, str(s.n_complete), str(s.n_failed), str(s.n_pruned),
                     str(s.n_infeasible), str(s.n_running), str(s.trials), str(s.front_size),
                     f"{s.hypervolume:.4g}" if s.hypervolume is not None else "-",
                     f"{s.created_at:%Y-%m-%d %H:%M}")
    return grid


def summary_json(s: Any) -> dict[str, Any]:
    """`nas ls --json`: a `SearchSummary` with ISO 8601 timestamps."""
    import dataclasses

    out = dataclasses.asdict(s)
    for key, value in out.items():
        if hasattr(value, "isoformat"):
            out[key] = value.isoformat()
    return out


def metric_cell(record: Any, metric: str, intervals: Intervals | None = None,
                unresolved: Unresolved | None = None, digits: int = 4) -> str:
    """A metric's value as tables show it: ``0.1234 [0.1203, 0.1261] ≈`` when re-timed (its
    95% interval) and its order against another member is not resolved on it; ``-`` if absent."""
    if metric not in record.metrics:
        return "-"
    text = f"{record.metrics[metric]:.{digits}g}"
    ci = (intervals or {}).get(record.id, {}).get(metric)
    if ci is not None:
        text += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
    if any(u["metric"] == metric for u in (unresolved or {}).get(record.id, ())):
        text += f" {UNRESOLVED_MARK}"
    return text


def unresolved_note(records: Sequence[Any], unresolved: Unresolved | None,
                    number: int | None = None) -> str:
    """The footnote under a table with ``≈`` marks: each unresolved pair among ``records``
    once, by trial numbers, and the metric."""
    trial = {r.id: r.trial_number for r in records}
    pairs: list[str] = []
    seen: set[tuple[int, int, str]] = set()
    for r in records:
        for u in (unresolved or {}).get(r.id, ()):
            key = (*sorted((r.id, u["id"])), u["metric"])
            if key in seen:
                continue
            seen.add(key)  # type: ignore[arg-type]
            other = u.get("trial_number", trial.get(u["id"]))
            pairs.append(f"trial {r.trial_number} and trial {other} on {u['metric']}")
    if not pairs:
        return ""
    which = f"re-timing {number}" if number is not None else "the latest re-timing"
    return (f"{UNRESOLVED_MARK} order not resolved by {which} (95% intervals overlap): "
            + "; ".join(pairs))


def front_table(console: Console, analysis: Any, intervals: Intervals | None = None,
                unresolved: Unresolved | None = None, retime_number: int | None = None) -> Table:
    """`nas show`: the front of a `FrontAnalysis` by its first objective, the knee marked.
    A re-timed front shows its values' 95% intervals and marks (≈, with a footnote) the pairs
    whose order the re-timing did not resolve."""
    objectives = analysis.metrics[:4]
    grid = table(console, "trial", "architecture", "params", *objectives,
                 title=f"Pareto front of {escape(analysis.search.name)} ({len(analysis.front)} "
                       "candidates)", right=("trial", "params", *objectives))
    for r in analysis.front:
        marker = " (knee)" if r.id == analysis.knee_id else ""
        grid.add_row(f"{r.trial_number}{marker}", r.architecture.describe(),
                     f"{r.architecture.n_params:,}",
                     *[metric_cell(r, m, intervals, unresolved) for m in objectives])
    note = unresolved_note(analysis.front, unresolved, retime_number)
    if note:
        grid.caption = escape(note)
    return grid


def retimes_table(console: Console, retimes: Sequence[Any], trial_of: Mapping[int, int]) -> Table:
    """`nas show` of a re-timed search: one row per `RetimeRecord`, the latest last: when, on
    which machine, how many members, who entered and left the front, unresolved pairs."""
    def trials(ids: Sequence[int]) -> str:
        return ", ".join(str(trial_of.get(i, f"id {i}")) for i in ids) or "-"

    grid = table(console, "#", "when", "machine", "profiles", "members", "entered", "left",
                 "unresolved", "rounds", "seconds",
                 title=f"Re-timings of {escape(retimes[0].search) if retimes else 'the search'} "
                       "(members timed together, interleaved; entered/left are trial numbers)",
                 right=("#", "members", "unresolved", "rounds", "seconds"))
    for r in retimes:
        grid.add_row(str(r.number), f"{r.created_at:%Y-%m-%d %H:%M}",
                     escape(r.machine.summary) if r.machine is not None else "not recorded",
                     escape(", ".join(r.profiles)), str(len(r.members)), trials(r.entered),
                     trials(r.left), str(len(r.unresolved)), str(r.rounds), f"{r.seconds:.1f}")
    return grid


def latency_tables(console: Console, record: Any, earlier: Mapping[str, Sequence[Any]] | None = None,
                   intervals: Intervals | None = None) -> list[Table]:
    """`nas show NAME --trial N`: per profile, the measurement in force (every timed quantity:
    median, p90, CV, 95% interval when re-timed), throughput and memory (measured peak beside
    the estimate) and the machine; then the earlier measurements, kept, by their medians."""
    out: list[Table] = []
    for lat in record.latencies:
        stats = lat.stats()
        label = "the search's" if lat.measurement == 0 else f"re-timing {lat.measurement}"
        grid = table(console, "quantity", "median (ms)", "p90 (ms)", "CV", "95% interval (ms)", "runs",
                     title=f"Trial {record.trial_number} on {escape(lat.profile)} "
                           f"(measurement {lat.measurement}: {label})",
                     right=("median (ms)", "p90 (ms)", "CV", "95% interval (ms)", "runs"))
        for name, s in stats.items():
            ci = (f"[{s.ci_low_ms:.4g}, {s.ci_high_ms:.4g}]"
                  if s.ci_low_ms is not None and s.ci_high_ms is not None else "-")
            grid.add_row(escape(name), f"{s.median_ms:.4g}", f"{s.p90_ms:.4g}", f"{100 * s.cv:.1f}%",
                         ci, f"{s.n:,}")
        facts = []
        if lat.tokens_per_s is not None:
            ci = (intervals or {}).get(record.id, {}).get(f"throughput:{lat.profile}:tokens_per_s")
            facts.append(f"{lat.tokens_per_s:.4g} tokens/s"
                         + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci is not None else ""))
        if lat.peak_mb is not None or lat.estimate_mb is not None:
            peak = f"{lat.peak_mb:.4g}" if lat.peak_mb is not None else "-"
            estimate = f"{lat.estimate_mb:.4g}" if lat.estimate_mb is not None else "-"
            diff = (f" ({lat.peak_mb - lat.estimate_mb:+.4g} MB)"
                    if lat.peak_mb is not None and lat.estimate_mb is not None else "")
            facts.append(f"peak {peak} MB measured vs {estimate} MB estimated{diff}")
        facts.append(f"measured on {lat.machine.summary}" + (f", host {lat.machine.hostname}"
                                                           if lat.machine.hostname else "")
                     if lat.machine is not None else "machine not recorded")
        grid.caption = escape(" · ".join(facts))
        out.append(grid)
        older = list((earlier or {}).get(lat.profile, ()))
        if older:
            names = list(stats)
            history = table(console, "measurement", "machine", *(f"{n} (ms)" for n in names),
                            title=f"Earlier measurements of trial {record.trial_number} on "
                                  f"{escape(lat.profile)} (kept)",
                            right=tuple(f"{n} (ms)" for n in names))
            for e in older:
                theirs = e.stats()
                history.add_row(str(e.measurement),
                                escape(e.machine.summary) if e.machine is not None else "not recorded",
                                *(f"{theirs[n].median_ms:.4g}" if n in theirs else "-" for n in names))
            out.append(history)
    return out


def trials_table(console: Console, analysis: Any, states: Sequence[str] = (),
                 intervals: Intervals | None = None, unresolved: Unresolved | None = None) -> Table:
    """`nas show --all`: every trial with where it stands (front, knee, dominated, infeasible)
    or its state (failed, running, pruned: stopped at a rung, the error says which and why;
    infeasible: never trained, the error says which constraint its shape step broke) and
    error. ``states`` (`nas show --state`) keeps the trials in those stored states only.
    Re-timed values carry their intervals and ≈ marks, as in `front_table`."""
    objectives = analysis.metrics[:4]
    rungs = bool(analysis.search.fidelity)
    shown = [r for r in analysis.candidates if not states or r.state in states]
    which = f" in state {', '.join(states)}" if states else ""
    grid = table(console, "trial", "state", "architecture", "params", *objectives,
                 *(("tokens",) if rungs else ()), "error",
                 title=f"Trials of {escape(analysis.search.name)}{which} ({len(shown)}"
                       f"{f' of {len(analysis.candidates)}' if states else ''}; "
                       f"{len(analysis.front)} on the front)",
                 right=("trial", "params", *objectives, "tokens"))
    where = {r.id: i for i, r in enumerate(analysis.complete)}
    for r in shown:
        values = [metric_cell(r, m, intervals, unresolved) for m in objectives]
        grid.add_row(str(r.trial_number), standing(analysis, r, where), r.architecture.describe(),
                     f"{r.architecture.n_params:,}", *values, *((f"{r.tokens:,}",) if rungs else ()),
                     r.error)
    note = unresolved_note(shown, unresolved)
    if note:
        grid.caption = escape(note)
    return grid


def standing(analysis: Any, record: Any, where: dict[int, int] | None = None) -> str:
    """Where a trial stands: front (knee), dominated, repeat, infeasible, or its stored state.
    ``where``: candidate id -> its index in ``analysis.complete`` (for many calls)."""
    if where is None:
        where = {r.id: i for i, r in enumerate(analysis.complete)}
    i = where.get(record.id)
    if i is None:
        return record.state
    if analysis.on_front[i]:
        return "front (knee)" if record.id == analysis.knee_id else "front"
    if record.id not in analysis.front_ids and _repeat(analysis, record):
        return "repeat"
    return "dominated" if analysis.feasible[i] else "infeasible"


def rungs_table(console: Console, analysis: Any) -> Table:
    """`nas show` of a search with successive halving: per rung, its tokens, how many
    candidates reached it, were pruned there and went on; the tokens spent in the caption."""
    counts = analysis.rung_counts()
    eta = (analysis.search.fidelity or {}).get("eta")
    grid = table(console, "rung", "tokens", "reached", "pruned", "went on",
                 title=f"Rungs of {escape(analysis.search.name)} (successive halving"
                       f"{f', the top 1/{eta} go on' if eta else ''})",
                 right=("tokens", "reached", "pruned", "went on"))
    for c in counts:
        last = c.rung == len(counts) - 1
        grid.add_row(f"{c.rung + 1} of {len(counts)}", f"{c.tokens:,}", str(c.reached), str(c.pruned),
                     f"{c.went_on}{' complete' if last else ''}")
    spent = analysis.tokens_spent()
    if spent is not None:
        grid.caption = f"{spent:,} training tokens spent on every rung of every candidate"
    return grid


def candidate_tables(console: Console, analysis: Any, record: Any) -> list[Table]:
    """`nas show NAME --trial N`: one trial (standing, architecture, metrics, error) and its
    validation loss at every rung it reached."""
    facts = table(console, "", "", title=f"Trial {record.trial_number} of {escape(analysis.search.name)}")
    facts.show_header = False
    rows = [("state", standing(analysis, record)), ("architecture", record.architecture.describe()),
            ("arch hash", record.arch_hash), ("params", f"{record.architecture.n_params:,}")]
    rows += [(m, f"{record.metrics[m]:.6g}") for m in analysis.metrics if m in record.metrics]
    rows += [(m, f"{v:.6g}") for m, v in sorted(record.metrics.items())
             if m not in analysis.metrics and m != "params"]
    rows += [("training tokens", f"{record.tokens:,}")] + ([("error", record.error)] if record.error else [])
    for key, value in rows:
        facts.add_row(key, value)
    if not record.rungs:
        return [facts]
    n = len(analysis.search.rung_tokens)
    losses = table(console, "rung", "tokens", "val_loss", "seconds", "",
                   title=f"Rung losses of trial {record.trial_number}",
                   right=("tokens", "val_loss", "seconds"))
    for k, x in enumerate(record.rungs):
        last = k == len(record.rungs) - 1
        note = ("pruned here" if record.state == "pruned" else "") if last else "promoted"
        losses.add_row(f"{x.rung + 1} of {max(n, x.rung + 1)}", f"{x.tokens:,}",
                       f"{x.val_loss:.4f}" if x.val_loss is not None else "-", f"{x.seconds:.2f}", note)
    return [facts, losses]


def _repeat(analysis: Any, record: Any) -> bool:
    """A later trial of an architecture already evaluated: it is never ranked on its own."""
    first = next(r for r in analysis.complete if r.arch_hash == record.arch_hash)
    return first.id != record.id


def empty_front_message(analysis: Any) -> str:
    """Why a front is empty, for stderr (the output stays parseable)."""
    name, n = analysis.search.name, len(analysis.complete)
    if not n:
        infeasible = len(analysis.infeasible)
        why = (f" ({infeasible} infeasible: broke a constraint before training)" if infeasible else "")
        return f"search {name!r} has no Pareto front yet: no trial is complete{why}"
    return (f"search {name!r} has no Pareto front: none of its {n} complete trials meets the "
            f"constraints {list(analysis.search.constraints)}")


class _NoFlagMetavar:
    """Typer prints ``<bool>`` as the value of every flag (``--json <bool>``, even
    ``--help <bool>``), though a flag takes no value: show none."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params


class Command(_NoFlagMetavar, TyperCommand):
    """A `nas` command: flags without a metavar in their help."""


class Group(_NoFlagMetavar, TyperGroup):
    """The `nas` group: flags without a metavar in its help."""


class App(typer.Typer):
    """Every ``@app.command()`` gets `Command` unless it names another class."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


class LiveProgress:
    """`nas search`'s progress: done/total, running, failed, pruned, front size, hypervolume,
    training tokens spent, ETA.

    A live bar on a terminal (or with $NAS_FORCE_PROGRESS), else one line per change.
    """

    def __init__(self, console: Console, name: str, total: int, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and (console.is_terminal or bool(os.environ.get("NAS_FORCE_PROGRESS")))
        self.name, self.total = name, total
        self._last: tuple[int, int] | None = None

    def __enter__(self) -> Callable[[Any], None]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if not self.enabled:
            return self._plain
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("running {task.fields[running]} · failed {task.fields[failed]} · "
                       "infeasible {task.fields[infeasible]} · pruned {task.fields[pruned]} · "
                       "front {task.fields[front]} · HV {task.fields[hv]} · {task.fields[tokens]} tokens"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task(self.name, total=self.total, running=0, failed=0, infeasible=0,
                                      pruned=0, front=0, hv="-", tokens="0")
        return self._update

    def _update(self, p: Any) -> None:
        hv = f"{p.hypervolume:.4g}" if p.hypervolume is not None else "-"
        self.bar.update(self.task, completed=p.done, total=p.total, running=p.running, failed=p.failed,
                        infeasible=getattr(p, "infeasible", 0), pruned=getattr(p, "pruned", 0),
                        front=p.front, hv=hv, tokens=f"{getattr(p, 'tokens', 0):,}")

    def _plain(self, p: Any) -> None:
        infeasible, pruned = getattr(p, "infeasible", 0), getattr(p, "pruned", 0)
        key = (p.done, p.failed, infeasible)
        if self._last != key:
            self._last = key
            hv = f"{p.hypervolume:.4g}" if p.hypervolume is not None else "-"
            never_trained = f"{infeasible} infeasible, " if infeasible else ""
            stopped = f"{pruned} pruned, " if pruned else ""
            self.console.print(f"{p.done}/{p.total} done, {p.running} running, {p.failed} failed, "
                               f"{never_trained}{stopped}front {p.front}, HV {hv}, "
                               f"{getattr(p, 'tokens', 0):,} training tokens", highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


class ExportProgress:
    """`nas export`'s stage lines, and a transient bar while --train-tokens trains."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> Callable[[str, int, int, str], None]:
        self.bar = _bar(self.console, "{task.description}", "{task.fields[detail]}")
        self.task: Any = None
        self.bar.__enter__()
        return self._update

    def _update(self, stage: str, done: int, total: int, detail: str) -> None:
        if stage != "train":
            self.bar.console.print(f"  {stage}...", highlight=False)
            return
        if self.task is None:
            self.task = self.bar.add_task("training", total=total, detail="")
        self.bar.update(self.task, completed=done, total=total, detail=detail)

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


class TrainingProgress:
    """`nas evaluate`'s bar over training tokens, on stderr so ``--json`` stays clean."""

    def __init__(self, console: Console, total: int, enabled: bool) -> None:
        self.console, self.total, self.enabled = console, total, enabled

    def __enter__(self) -> Callable[[int, int, float], None] | None:
        if not self.enabled:
            return None
        self.bar = _bar(self.console, "training", "{task.fields[loss]}")
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=self.total, loss="")
        return self._update

    def _update(self, done: int, total: int, loss: float) -> None:
        self.bar.update(self.task, completed=done, total=total, loss=f"loss {loss:.3f}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def _bar(console: Console, label: str, detail: str) -> Any:
    """The transient bar every long step shows: label, bar, detail, elapsed, remaining."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), TextColumn(detail), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)
