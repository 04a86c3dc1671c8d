"""What every `nas` command shares: the Typer app, its consoles, the error exit and the
store openers. The commands live in `nas.cli.searching` and `nas.cli.reading`."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from nas.errors import NasError
from nas.terminal import (
    App,
    Group,
    candidate_tables,
    empty_front_message,
    front_table,
    make_console,
    retimes_table,
    rungs_table,
    trials_table,
)

EXIT_STOPPED = 130  # 128 + SIGINT, as shells report an interrupted command


app = App(add_completion=False, no_args_is_help=False, rich_markup_mode="rich", cls=Group,
           context_settings={"help_option_names": ["-h", "--help"]},
           help="Hardware-aware neural architecture search for small language models.")
console = make_console()
err_console = make_console(stderr=True)

DEFAULT_DB = "sqlite:///nas.db"
DbOption = typer.Option(None, "--db", help="Database URL (default: $NAS_DB or sqlite:///nas.db).")


def db_url(value: str | None) -> str:
    return value or os.environ.get("NAS_DB") or DEFAULT_DB


def _read_store(db: str | None):  # -> Store
    """The store for a command that only reads: a database that does not exist is an error,
    never created (a mistyped --db must not leave an empty database behind)."""
    from nas.store import Store

    return Store(db_url(db), must_exist=True)


def _split(values: list[str] | None) -> list[str]:
    """Accept both repeated options and comma-separated lists."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def main() -> None:
    """The console script: NasError and usage errors become ``error: <message>``, exit 2."""
    try:
        code = app(prog_name="nas", standalone_mode=False)
    except NasError as err:
        _fail(str(err), 2)
    except typer.TyperException as err:  # Typer's usage errors: bad option value, unknown option...
        _fail(_usage_message(err), int(getattr(err, "exit_code", 2)))
    except typer.Abort:  # a confirmation prompt answered with Ctrl-C or end of input
        err_console.print("aborted", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    # Escaped: messages quote user values, and rich would eat "[lo, hi]" as markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _usage_message(err: typer.TyperException) -> str:
    # "Value error, " is how Typer's type coercion prefixes a rejected value.
    message = " ".join(err.format_message().split()).rstrip(".").replace("Value error, ", "")
    message = message[:1].lower() + message[1:]
    ctx = getattr(err, "ctx", None)
    return f"{message} (see: {ctx.command_path} -h)" if ctx is not None else message


def _show_version(value: bool) -> None:
    if value:
        from nas import __version__

        print(f"nas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,  # noqa: ARG001 - read by the callback
                                       help="Print the version of nas and exit.")) -> None:
    """Hardware-aware neural architecture search for small language models."""
    global console, err_console
    # Decided per run: whether stdout is a terminal, or a pipe that must get full lines.
    console, err_console = make_console(), make_console(stderr=True)



def _db_flag(db: str | None) -> str:
    import shlex

    return f" --db {shlex.quote(db)}" if db else ""


def _front(store, name: str):
    from nas.fronts import load_front

    analysis = load_front(store, name)  # shared with `nas serve` and `nas report`
    return analysis.search, analysis.metrics, list(analysis.front), analysis.knee_id


def print_search(store, name: str, every_trial: bool = False, states: list[str] | None = None,
                 retimes_listed: bool = True) -> None:
    """The front (or every trial, or those in ``states``) with the intervals and unresolved
    pairs of the latest re-timing, the rungs of a search with successive halving, and (with
    ``retimes_listed``) the re-timings; an empty front says why on stderr. `nas show` and the
    end of `nas search` both print a search with it."""
    from nas.fronts import load_front
    from nas.service.measurements import intervals, unresolved_by_candidate

    analysis = load_front(store, name)  # shared with `nas serve` and `nas report`
    retimes = store.retimes(name)
    trial_of = {r.id: r.trial_number for r in analysis.candidates}
    cis = {r.id: intervals(r.latencies) for r in analysis.candidates if r.latencies}
    unresolved = unresolved_by_candidate(retimes[-1] if retimes else None, trial_of)
    if states or every_trial:
        console.print(trials_table(console, analysis, states=states, intervals=cis, unresolved=unresolved))
    else:
        console.print(front_table(console, analysis, intervals=cis, unresolved=unresolved,
                                  retime_number=retimes[-1].number if retimes else None))
    if analysis.search.fidelity:
        console.print(rungs_table(console, analysis))
    if retimes and retimes_listed:
        console.print(retimes_table(console, retimes, trial_of))
    if not analysis.front and not states:
        err_console.print(empty_front_message(analysis), markup=False, highlight=False)


def _print_trial(store, name: str, trial: int) -> None:
    """One trial of a search: where it stands, its numbers and its loss at every rung."""
    from nas.fronts import load_front

    analysis = load_front(store, name)
    record = store.candidate_by_trial(name, trial)  # NotFoundError naming the search and trial
    for part in candidate_tables(console, analysis, record):
        console.print(part)
