"""The commands that read a search (ls, show, pareto, export, serve, report) and `nas rm`."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from nas.cli import common
from nas.cli.common import DbOption, _print_trial, _read_store, _split, app, db_url, print_search
from nas.errors import ConfigError, NasError
from nas.terminal import (
    ExportProgress,
    empty_front_message,
    latency_tables,
    searches_table,
    summary_json,
)


# ----- reading searches -----------------------------------------------------------------
@app.command("ls")
def list_searches(
    db: str | None = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the searches in the database."""
    store = _read_store(db)
    searches = store.list_searches()
    if as_json:
        print(json.dumps([summary_json(s) for s in searches], indent=2))
        return
    if not searches:
        common.console.print(f"no searches in {store.describe_url()}", markup=False, highlight=False)
        return
    common.console.print(searches_table(common.console, searches))


class State(str, Enum):  # the stored candidate states (nas.states.CANDIDATE_STATES)
    running = "running"
    complete = "complete"
    failed = "failed"
    pruned = "pruned"
    infeasible = "infeasible"


@app.command()
def show(
    name: str = typer.Argument(..., help="Search name."),
    db: str | None = DbOption,
    show_all: bool = typer.Option(
        False,
        "--all",
        help="List every trial: dominated, "
        "infeasible, failed, pruned and running ones too, with their state "
        "and error.",
    ),
    state: list[State] | None = typer.Option(
        None, "--state", help="List the trials in this state only (repeatable), e.g. --state pruned."
    ),
    trial: int | None = typer.Option(
        None, "--trial", min=0, help="Show one trial: its numbers, error, loss at every rung and, "
        "in a search from a parent, how it was derived from the parent."
    ),
) -> None:
    """Show a search's Pareto front as a table (knee marked), by trial number, and its rungs
    (candidates that reached each and were pruned there) when it trains by successive halving;
    a search from a parent first names the parent. A re-timed front shows its latencies with
    their 95% intervals, marks (≈) the pairs whose order is not resolved, and lists its
    re-timings; ``--trial`` shows every measurement of the trial, per profile."""
    store = _read_store(db)
    if trial is not None:
        _print_trial(store, name, trial)
        record = store.candidate_by_trial(name, trial)
        _print_derivation(record.derivation)
        _print_latencies(store, record)
        return
    _print_parent(store.get_search(name).parent)
    print_search(store, name, every_trial=show_all, states=[s.value for s in state or []])


def _print_latencies(store, record) -> None:
    """Every measurement of one trial, per profile: the one in force, then the earlier ones."""
    from nas.service.measurements import history_by_profile, intervals

    earlier = history_by_profile(store.latency_history(record.id), record.latencies)
    for part in latency_tables(common.console, record, earlier, {record.id: intervals(record.latencies)}):
        common.console.print(part)


def _print_parent(parent: dict | None) -> None:
    """The search's parent in one line (`nas.service.lineage`, as its page says it); nothing
    for a search from scratch."""
    from nas.service.lineage import parent_line

    if parent:
        common.console.print(parent_line(parent), markup=False, highlight=False)


def _print_derivation(derivation: dict | None) -> None:
    """How a trial came from the parent, as its page's "Derived from the parent" section."""
    from nas.service.lineage import derivation_rows, derivation_summary
    from nas.terminal import table

    if not derivation:
        return
    grid = table(common.console, "", "", title="Derived from the parent")
    grid.show_header = False
    grid.caption = escape(derivation_summary(derivation))
    for key, value in derivation_rows(derivation):
        grid.add_row(escape(key), escape(value))
    common.console.print(grid)


class Format(str, Enum):
    csv = "csv"
    json = "json"


@app.command("pareto")
def pareto_command(
    name: str = typer.Argument(..., help="Search name."),
    fmt: Format = typer.Option(Format.csv, "--format", help="Output format."),
    db: str | None = DbOption,
) -> None:
    """Print a search's Pareto front as CSV or JSON (a message on stderr when it is empty)."""
    import csv
    import dataclasses

    from nas.architecture import Architecture
    from nas.fronts import load_front

    analysis = load_front(_read_store(db), name)
    search, objectives, knee = analysis.search, analysis.metrics, analysis.knee_id
    rows = [
        {
            "trial": r.trial_number,
            "candidate_id": r.id,
            "knee": r.id == knee,
            "arch_hash": r.architecture.hash,
            **{m: r.metrics[m] for m in objectives},
            "params": r.architecture.n_params,
            **{f"arch.{f.name}": getattr(r.architecture, f.name) for f in dataclasses.fields(Architecture)},
        }
        for r in analysis.front
    ]
    if not rows:
        common.err_console.print(empty_front_message(analysis), markup=False, highlight=False)
    if fmt is Format.json:
        print(json.dumps({"search": name, "objectives": search.objectives, "front": rows}, indent=2))
        return
    # The same columns with or without rows: a script reading the header needs no special case.
    fields = [
        "trial",
        "candidate_id",
        "knee",
        "arch_hash",
        *objectives,
        "params",
        *[f"arch.{f.name}" for f in dataclasses.fields(Architecture)],
    ]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


# ----- export -------------------------------------------------------------------------------
@app.command("export")
def export_command(
    name: str = typer.Argument(..., help="Search name."),
    out: Path = typer.Option(
        ..., "-o", "--out", "--output", help="Directory to write (must not exist; see --force)."
    ),
    trial: int | None = typer.Option(None, "--trial", min=0, help="Export this trial."),
    pick: str | None = typer.Option(
        None,
        "--pick",
        help="'knee' (of the front) or 'best:METRIC' (e.g. best:val_loss; append :max to maximise).",
    ),
    where: list[str] | None = typer.Option(
        None, "--where", help="With --pick: only candidates with METRIC<=VALUE or METRIC>=VALUE (repeatable)."
    ),
    train_tokens: int | None = typer.Option(
        None,
        "--train-tokens",
        min=1,
        help="Train this many more tokens beyond the proxy run before exporting.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing export at --out."),
    db: str | None = DbOption,
) -> None:
    """Export a candidate: ONNX graphs, weights, tokenizer, model card and a Hugging Face config."""
    from nas.export import export_candidate
    from nas.pick import pick_candidate

    store = _read_store(db)
    chosen = pick_candidate(store, name, trial=trial, pick=pick, where=_split(where))
    c = chosen.candidate
    common.console.print(
        f"exporting {escape(name)} trial {c.trial_number} ({escape(chosen.reason)}): "
        f"{escape(c.architecture.describe())}",
        highlight=False,
    )
    with ExportProgress(common.err_console) as on_progress:
        path = export_candidate(
            store, chosen.search, c, out, train_tokens=train_tokens, force=force, progress=on_progress
        )
    info = json.loads((path / "metrics.json").read_text())
    for file in sorted(path.iterdir()):
        common.console.print(f"  {file.name:<22} {file.stat().st_size:>12,} bytes", highlight=False)
    hf = info["huggingface"]
    common.console.print(
        escape(
            f"wrote {path}; load it with nas.load({str(path)!r})"
            + (
                f" or transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})"
                if hf["mapped"]
                else f" (no Hugging Face config: {hf['reason']})"
            )
        ),
        highlight=False,
    )


# ----- browsing ---------------------------------------------------------------------------
@app.command()
def serve(
    db: str | None = DbOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs a token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    token: str | None = typer.Option(
        None, "--token", help="Required for writes (start/stop a search); default: $NAS_TOKEN."
    ),
) -> None:
    """Browse searches in a web browser: Pareto plots, candidates, a JSON API under /api."""
    import uvicorn

    from nas.service import create_app
    from nas.service.auth import LOOPBACK_HOSTS, check_bind, is_loopback, resolve_token
    from nas.store import Store

    secret = resolve_token(token)
    check_bind(host, secret)
    _check_port_free(host, port)
    store = Store(db_url(db))  # creating: the service starts and stops searches
    # On loopback, answer only loopback Host headers: a DNS-rebinding page cannot read us.
    allowed = list(LOOPBACK_HOSTS) if is_loopback(host) else None
    web = create_app(store, token=secret, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    common.console.print(
        f"serving {escape(store.describe_url())} on [bold]http://{shown}:{port}[/]"
        f"{' (token required for writes)' if secret else ''}; Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(web, host=host, port=port, log_level="warning")


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once, as uvicorn will, so a taken port is one line before anything
    says "serving". SO_REUSEADDR like uvicorn: a port left in TIME_WAIT is free to it."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ConfigError(
            f"--host={host!r} cannot be resolved ({err.strerror})", field="--host", value=host
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            import errno

            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port={port} is already in use on {host}; stop what listens "
                    "there or choose another --port",
                    field="--port",
                    value=port,
                ) from None
            raise ConfigError(
                f"--port={port}: cannot listen on {host}: {err.strerror}", field="--port", value=port
            ) from None


@app.command()
def report(
    name: str = typer.Argument(..., help="Search name."),
    out: Path = typer.Option(
        Path("report.html"), "-o", "--out", "--output", help="HTML file to write (its directory must exist)."
    ),
    db: str | None = DbOption,
) -> None:
    """Write a search's plots and tables as one self-contained, offline HTML file."""
    from nas.report import check_writable, write_report

    check_writable(out)  # before the (slow) rendering
    path = write_report(_read_store(db), name, out)
    common.console.print(
        f"wrote {escape(str(path))} ({path.stat().st_size / 1e6:.1f} MB): open it in any "
        "browser, no server or network needed",
        highlight=False,
    )


# ----- removing -------------------------------------------------------------------------------
@app.command("rm")
def remove(
    name: str = typer.Argument(..., help="Search name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    db: str | None = DbOption,
) -> None:
    """Delete a search: its trials, their results and weights, and its Optuna study.

    Refused while the search runs; stop it first (Ctrl-C, or Stop in `nas serve`).
    """
    from nas.states import LIVE_STATUSES

    store = _read_store(db)
    found = store.get_search(name)  # NotFoundError lists the names there are
    # The store reports a running search whose driver's heartbeat went stale as "driver
    # lost": that one can go. A live driver would write on into deleted rows.
    if found.status in LIVE_STATUSES:
        raise NasError(
            f"search {name!r} is {found.status}; stop it before removing it (Ctrl-C "
            f"where it runs, or POST /api/searches/{name}/stop)"
        )
    n = len(store.candidates(name, with_proxy=False))
    if not yes:
        try:
            agreed = typer.confirm(
                f"delete search {name!r} ({found.status}, {n} trials) from {store.describe_url()}?",
                default=False,
            )
        except typer.Abort:  # Ctrl-C or end of input at the prompt
            agreed = False
        if not agreed:
            common.err_console.print(f"kept search {name!r}: nothing deleted", markup=False, highlight=False)
            raise typer.Exit(1)
    store.delete_search(name)
    common.console.print(
        f"deleted search {escape(name)} ({n} trials) from {escape(store.describe_url())}", highlight=False
    )
