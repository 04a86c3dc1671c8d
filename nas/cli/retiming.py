"""`nas retime`: time a search's front together on this machine and record what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.markup import escape

from nas.cli import common
from nas.cli.common import DbOption, _read_store, app
from nas.errors import NasError


@app.command()
def retime(
    name: str = typer.Argument(..., help="Search name."),
    every: bool = typer.Option(False, "--all", help="Re-time every complete candidate, not only the "
                               "front and its nearest dominated neighbours (needed when other "
                               "candidates were timed on another machine)."),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Interleaved rounds. Default: "
                                      "each profile's own rounds."),
    seed: int = typer.Option(0, "--seed", help="Seeds the random order of each round and the "
                             "bootstrap intervals."),
    db: str | None = DbOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Time a search's front (and its nearest neighbours) together, interleaved in rounds in
    random order, so machine drift hits every member alike; store the new measurements with
    95% intervals (the old ones are kept) and the front recomputed from them.

    Refused while the search runs, and when other candidates were timed on another machine
    (--all re-times them all).
    """
    from nas.retime import retime as run_retime
    from nas.states import LIVE_STATUSES

    store = _read_store(db)
    found = store.get_search(name)  # NotFoundError lists the names there are
    if found.status in LIVE_STATUSES:
        raise NasError(f"search {name!r} is {found.status}: its driver re-times the front when it "
                       "finishes; re-time it by hand once it has finished or stopped")
    before = {r.id: r.trial_number for r in store.candidates(name, with_proxy=False)}
    with _bar(enabled=progress) as on_progress:
        record = run_retime(store, name, all_candidates=every, rounds=rounds, seed=seed,
                            progress=on_progress)

    def trials(ids: tuple[int, ...]) -> str:
        return ", ".join(str(before.get(i, f"id {i}")) for i in sorted(ids, key=lambda i: before.get(i, i))) \
            or "none"

    say = common.console.print
    say(f"re-timed search {escape(name)} (re-timing {record.number}): {len(record.members)} "
        f"candidates together (trials {trials(record.members)}) on {', '.join(record.profiles)}, "
        f"{record.rounds} rounds in {record.seconds:.1f}s", highlight=False)
    if record.machine is not None:
        say(f"machine: {escape(record.machine.summary)} [{record.machine.hash}]", highlight=False)
    say(f"front: {len(record.front_before)} -> {len(record.front_after)} members; entered: "
        f"{trials(record.entered)}; left: {trials(record.left)}", highlight=False)
    say(f"unresolved pairs (95% intervals overlap on an objective): {len(record.unresolved)}"
        + (f" of {len(record.members) * (len(record.members) - 1) // 2}" if len(record.members) > 1 else ""),
        highlight=False)
    for a, b, metric in record.unresolved[:10]:
        say(f"  trials {before.get(a, a)} and {before.get(b, b)} on {escape(metric)}", highlight=False)
    if len(record.unresolved) > 10:
        say(f"  ... and {len(record.unresolved) - 10} more", highlight=False)


@contextmanager
def _bar(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A transient bar on stderr: exporting the members, then timing them per profile."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), console=common.err_console, transient=True)
    task: dict[str, Any] = {}

    def update(what: str, done: int, total: int) -> None:
        if "id" not in task:
            task["id"] = bar.add_task(what, total=total)
        bar.update(task["id"], description=what, completed=done, total=total)

    with bar:
        yield update
