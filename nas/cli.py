"""`nas`: thin Typer commands over the library. Heavy imports happen inside commands,
so `nas --help` and `nas ls` start fast.

Every refusal, ours or a usage error of Typer's, is one line on stderr, ``error: ...``,
exit status 2. ``nas search`` exits 0 when the search finished and 130 when it stopped
(Ctrl-C, SIGTERM, or a stop asked through ``nas serve``), so scripts can tell them apart.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nas.errors import ConfigError, NasError
from nas.terminal import (
    App,
    ExportProgress,
    Group,
    LiveProgress,
    empty_front_message,
    front_table,
    make_console,
    searches_table,
    summary_json,
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
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,  # noqa: ARG001 - Typer calls the eager callback; the value is unused here
                                       help="Print the version of nas and exit.")) -> None:
    """Hardware-aware neural architecture search for small language models."""
    global console, err_console
    # Decided per run: whether stdout is a terminal, or a pipe that must get full lines.
    console, err_console = make_console(), make_console(stderr=True)


# ----- search -------------------------------------------------------------------------
class Timing(str, Enum):
    exclusive = "exclusive"
    overlap = "overlap"


@app.command()
def search(
    space: str = typer.Argument("tiny", help="A name under search_spaces/ or a path to a YAML file."),
    name: str | None = typer.Option(None, "--name", help="Search name; running it again resumes it. "
                                       "Default: the space's name."),
    profiles: list[str] | None = typer.Option(None, "--profiles", "--profile", help="Hardware "
                                                 "profiles (names or paths, comma-separated). "
                                                 "Default: the space's."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Total trial budget (a resumed "
                                         "search runs only what is missing). Default: the space's."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Candidates training at "
                                          "once. Default: one per free training core (each takes "
                                          "--threads cores); on a cluster, one per cluster CPU."),
    db: str | None = DbOption,
    ray_address: str | None = typer.Option(None, "--ray-address", help="Join this Ray cluster "
                                              "instead of starting Ray locally."),
    data: list[str] | None = typer.Option(None, "--data", help="Text files or globs to train on "
                                             "instead of the space's corpus."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads per training task."),
    timing: Timing = typer.Option(Timing.exclusive, "--timing", help="'exclusive': time latency only "
                                  "while nothing trains on the node (accurate); 'overlap': time on "
                                  "reserved cores while training goes on (faster)."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", min=0.0, help="GPUs per training task."),
    max_retries: int = typer.Option(2, "--max-retries", min=0, help="Re-runs of a trial whose worker died."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress display."),
) -> None:
    """Search a space for the Pareto front of quality vs latency vs size.

    Exits 0 when the search finished, 130 when it was stopped (resume it by running it again).
    """
    from nas.hardware import load_profiles
    from nas.names import check_name
    from nas.search import SearchDriver, SearchRequest, resolve_profiles
    from nas.space import load_space
    from nas.specs import DataSpec
    from nas.store import Store

    if name is not None:  # before anything is read or written; '' is not "the default"
        check_name("--name", name)
    loaded = load_space(space)
    if name is None:
        check_name("name", loaded.name, source=loaded.source)
    chosen = resolve_profiles(loaded, load_profiles(",".join(_split(profiles))) if profiles else None)
    data_spec = None
    if data:
        data_spec = DataSpec(corpus=tuple(_split(data)), tokenizer=loaded.data.tokenizer,
                             val_fraction=loaded.data.val_fraction, seed=loaded.data.seed)
        data_spec.validate("--data")
    request = SearchRequest(space=loaded, name=name or loaded.name, profiles=chosen,
                            trials=trials or loaded.trials, db_url=db_url(db), data=data_spec,
                            workers=workers, ray_address=ray_address, train_threads=threads,
                            gpus_per_trial=gpus_per_trial, max_retries=max_retries,
                            timing=timing.value)
    store = Store(request.db_url)
    console.print(f"search [bold]{escape(request.name)}[/]: space {escape(loaded.name)} "
                  f"({escape(str(loaded.source))}), {request.trials} trials, profiles "
                  f"{', '.join(p.name for p in chosen)}, db {escape(store.describe_url())}",
                  highlight=False)
    for note in (request.trials_note(), request.oversubscription()):
        if note:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    resume = _resume_line(store, request)
    if resume:
        console.print(resume, markup=False, highlight=False)
    with LiveProgress(console, request.name, request.effective_trials, enabled=progress) as on_progress:
        outcome = SearchDriver(request, store, on_progress=on_progress).run()
    _print_front(store, request.name)
    console.print(f"\nsearch {escape(outcome.name)} {outcome.status} in {outcome.seconds:.0f}s: "
                  f"{outcome.n_complete} complete, {outcome.n_failed} failed, front of "
                  f"{len(outcome.front)}.", highlight=False)
    if outcome.status == "stopped":
        console.print(f"Resume with: [bold]{escape(_resume_command(space, outcome.name, db))}[/]",
                      highlight=False, soft_wrap=True)
    # soft_wrap: a terminal may wrap these lines, Rich never breaks a command or URL itself.
    console.print(f"Browse it:   [bold]nas serve{escape(_db_flag(db))}[/] then open "
                  f"http://127.0.0.1:8000/searches/{outcome.name}", highlight=False, soft_wrap=True)
    console.print(f"Report:      [bold]nas report {escape(outcome.name)}{escape(_db_flag(db))} "
                  "-o report.html[/]", highlight=False, soft_wrap=True)
    if outcome.status == "stopped":
        raise typer.Exit(EXIT_STOPPED)


def _resume_line(store: Any, request: Any) -> str | None:
    """What a run of an existing search will do, said before it starts (None for a new one).

    Done counts distinct architectures that are complete or failed, as the driver counts its
    budget (`SearchRequest.effective_trials`). A stored search of another space is left to the
    driver, which refuses it with the reason.
    """
    existing = store.find_search(request.name)
    if existing is None or existing.space_hash != request.space.hash:
        return None
    done = len({c.arch_hash for c in store.candidates(request.name, states=["complete", "failed"],
                                                      with_proxy=False)})
    budget = request.effective_trials
    if done >= budget:
        return (f"nothing to do: {request.name} already has {done} trials done (--trials "
                f"{budget}); raise --trials to search on")
    return f"resuming {request.name}: {done} of {budget} done, running {budget - done} more"


def _resume_command(space: str, name: str, db: str | None) -> str:
    import shlex

    return f"nas search {shlex.quote(space)} --name {shlex.quote(name)}{_db_flag(db)}"


def _db_flag(db: str | None) -> str:
    import shlex

    return f" --db {shlex.quote(db)}" if db else ""


# ----- evaluate -----------------------------------------------------------------------
@app.command()
def evaluate(
    arch: Path = typer.Option(..., "--arch", help="Architecture JSON file."),
    profile: list[str] = typer.Option(
        ["cpu-1t"], "--profiles", "--profile", help="Hardware profiles (repeat or comma-separate)."
    ),
    data: list[str] | None = typer.Option(
        None, "--data", help="Text files or globs (default: the embedded standard-library corpus)."
    ),
    tokens: int | None = typer.Option(
        None, "--tokens", min=1, help="Training tokens (default: the tiny space's proxy budget)."
    ),
    tokenizer: str = typer.Option("byte", "--tokenizer", help="'byte' or 'bpe:<vocab size>'."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for training."),
    max_seconds: float | None = typer.Option(
        None, "--max-seconds", min=0.1, help="Wall-clock cap on training (default: none)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Train one architecture, export it to ONNX and measure its latency."""
    import dataclasses

    from nas.architecture import Architecture
    from nas.data import check_fits, prepare
    from nas.evaluate import evaluate as run_evaluation
    from nas.hardware import check_available, load_profiles
    from nas.results import to_jsonable
    from nas.space import load_space
    from nas.specs import DataSpec

    try:
        text = arch.read_text()
    except OSError as err:
        raise NasError(f"{arch}: cannot read architecture file: {err.strerror}") from None
    architecture = Architecture.from_json(text, source=str(arch))
    profiles = load_profiles(",".join(_split(profile)))
    for p in profiles:
        p.check_context(architecture.max_seq_len, source=str(arch), field="max_seq_len")
        check_available(p)
    spec = DataSpec(corpus=tuple(_split(data)) or ("stdlib",), tokenizer=tokenizer)
    spec.validate("--data")
    budget = dataclasses.replace(load_space("tiny").budget, max_seconds=max_seconds)
    if tokens:
        budget = dataclasses.replace(budget, tokens=tokens)
    token_data = prepare(spec)
    if token_data.vocab_size != architecture.vocab_size:
        raise NasError(
            f"{arch}: vocab_size={architecture.vocab_size} does not match the tokenizer "
            f"{tokenizer!r} (vocab {token_data.vocab_size})"
        )
    check_fits(token_data, budget)
    with _training_progress(budget.tokens, enabled=not as_json) as on_step:
        result = run_evaluation(architecture, budget, token_data, profiles, threads=threads, progress=on_step)
    if as_json:
        print(json.dumps(to_jsonable(result), indent=2, allow_nan=True))
    else:
        _print_result(result)
    if result.state != "complete":
        raise typer.Exit(1)


class _training_progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if not self.enabled:
            return None
        self.bar = Progress(
            TextColumn("training"),
            BarColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=self.total, loss="")
        return self._update

    def _update(self, done: int, total: int, loss: float) -> None:
        self.bar.update(self.task, completed=done, total=total, loss=f"loss {loss:.3f}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def _print_result(result) -> None:
    arch = result.architecture
    table = Table(title=f"{arch.describe()}  [{arch.hash}]", show_header=False)
    table.add_row("state", result.state + (f": {result.error}" if result.error else ""))
    table.add_row("parameters", f"{arch.n_params:,} ({arch.non_embedding_params:,} non-embedding)")
    if result.proxy:
        table.add_row("validation loss", f"{result.proxy.val_loss:.4f} nats/token")
        table.add_row(
            "training",
            f"{result.proxy.tokens:,} tokens in {result.proxy.seconds:.1f}s "
            f"({result.proxy.tokens_per_s:,.0f} tokens/s)",
        )
    for lat in result.latencies:
        table.add_row(f"{lat.profile} prefill", _stats(lat.prefill))
        table.add_row(f"{lat.profile} decode", _stats(lat.decode))
    console.print(table)


def _stats(s) -> str:
    return f"{s.median_ms:.3f} ms (p90 {s.p90_ms:.3f}, CV {100 * s.cv:.1f}%, n={s.n})"


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
        console.print(f"no searches in {store.describe_url()}", markup=False, highlight=False)
        return
    console.print(searches_table(console, searches))


def _front(store, name: str):
    from nas.fronts import load_front

    analysis = load_front(store, name)  # shared with `nas serve` and `nas report`
    return analysis.search, analysis.metrics, list(analysis.front), analysis.knee_id


def _print_front(store, name: str, every_trial: bool = False) -> None:
    """The front by trial number (knee marked), or with ``every_trial`` every trial and its
    state; an empty front says why on stderr."""
    from nas.fronts import load_front

    analysis = load_front(store, name)  # shared with `nas serve` and `nas report`
    console.print(trials_table(console, analysis) if every_trial else front_table(console, analysis))
    if not analysis.front:
        err_console.print(empty_front_message(analysis), markup=False, highlight=False)


@app.command()
def show(
    name: str = typer.Argument(..., help="Search name."),
    db: str | None = DbOption,
    show_all: bool = typer.Option(
        False,
        "--all",
        help="List every trial: dominated, "
        "infeasible, failed and running ones too, with their state "
        "and error.",
    ),
) -> None:
    """Show a search's Pareto front as a table (knee marked), by trial number."""
    store = _read_store(db)
    _print_front(store, name, every_trial=show_all)


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
            **{f"arch.{k}": v for k, v in r.architecture.to_dict().items()},
        }
        for r in analysis.front
    ]
    if not rows:
        err_console.print(empty_front_message(analysis), markup=False, highlight=False)
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
    console.print(
        f"exporting {escape(name)} trial {c.trial_number} ({escape(chosen.reason)}): "
        f"{escape(c.architecture.describe())}",
        highlight=False,
    )
    with ExportProgress(err_console) as on_progress:
        path = export_candidate(
            store, chosen.search, c, out, train_tokens=train_tokens, force=force, progress=on_progress
        )
    info = json.loads((path / "metrics.json").read_text())
    for file in sorted(path.iterdir()):
        console.print(f"  {file.name:<22} {file.stat().st_size:>12,} bytes", highlight=False)
    hf = info["huggingface"]
    console.print(
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
    console.print(
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
    console.print(
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
            err_console.print(f"kept search {name!r}: nothing deleted", markup=False, highlight=False)
            raise typer.Exit(1)
    store.delete_search(name)
    console.print(
        f"deleted search {escape(name)} ({n} trials) from {escape(store.describe_url())}", highlight=False
    )


if __name__ == "__main__":
    main()
