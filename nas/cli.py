"""`nas`: thin Typer commands over the library. Heavy imports happen inside commands,
so `nas --help` and `nas ls` start fast."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nas.errors import NasError

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode="rich",
                  help="Hardware-aware neural architecture search for small language models.")
console = Console()
err_console = Console(stderr=True)

DEFAULT_DB = "sqlite:///nas.db"
DbOption = typer.Option(None, "--db", help="Database URL (default: $NAS_DB or sqlite:///nas.db).")


def db_url(value: str | None) -> str:
    return value or os.environ.get("NAS_DB") or DEFAULT_DB


def _split(values: list[str] | None) -> list[str]:
    """Accept both repeated options and comma-separated lists."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def main() -> None:
    try:
        app()
    except NasError as err:
        from rich.markup import escape

        # Escaped: messages quote user values, and rich would eat "[lo, hi]" as markup.
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)


# ----- search -------------------------------------------------------------------------
@app.command()
def search(
    space: str = typer.Argument("tiny", help="A name under search_spaces/ or a path to a YAML file."),
    name: Optional[str] = typer.Option(None, "--name", help="Search name; running it again resumes it. "
                                       "Default: the space's name."),
    profiles: Optional[list[str]] = typer.Option(None, "--profiles", help="Hardware profiles (names or "
                                                 "paths, comma-separated). Default: the space's."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Total trial budget (a resumed "
                                         "search runs only what is missing). Default: the space's."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Candidates training at once."),
    db: Optional[str] = DbOption,
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster "
                                              "instead of starting Ray locally."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Text files or globs to train on "
                                             "instead of the space's corpus."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads per training task."),
    timing: str = typer.Option("exclusive", "--timing", help="'exclusive': time latency only while "
                               "nothing trains on the node (accurate); 'overlap': time on reserved "
                               "cores while training goes on (faster)."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", min=0.0, help="GPUs per training task."),
    max_retries: int = typer.Option(2, "--max-retries", min=0, help="Re-runs of a trial whose worker died."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress display."),
) -> None:
    """Search a space for the Pareto front of quality vs latency vs size."""
    from nas.hardware import load_profiles
    from nas.search import SearchDriver, SearchRequest, resolve_profiles
    from nas.space import load_space
    from nas.specs import DataSpec
    from nas.store import Store

    loaded = load_space(space)
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
                            timing=timing)
    store = Store(request.db_url)
    console.print(f"search [bold]{request.name}[/]: space {loaded.name} ({loaded.source}), "
                  f"{request.trials} trials, profiles {', '.join(p.name for p in chosen)}, "
                  f"db {store.describe_url()}")
    note = request.oversubscription()
    if note:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    with _live_progress(request.name, request.trials, enabled=progress) as on_progress:
        outcome = SearchDriver(request, store, on_progress=on_progress).run()
    _print_front(store, request.name)
    verb = {"finished": "finished", "stopped": "stopped"}.get(outcome.status, outcome.status)
    console.print(f"\nsearch {outcome.name} {verb} in {outcome.seconds:.0f}s: {outcome.n_complete} "
                  f"complete, {outcome.n_failed} failed, front of {len(outcome.front)}.")
    if outcome.status == "stopped":
        console.print(f"Resume with: [bold]nas search {space} --name {outcome.name}"
                      f"{_db_flag(db)}[/]")
    console.print(f"Browse it:   [bold]nas serve{_db_flag(db)}[/] then open "
                  f"http://127.0.0.1:8000/searches/{outcome.name}")
    console.print(f"Report:      [bold]nas report {outcome.name}{_db_flag(db)} -o report.html[/]")


def _db_flag(db: str | None) -> str:
    return f" --db {db}" if db else ""


class _live_progress:
    """Rich progress: done/total, running, failed, front size, hypervolume, elapsed, ETA."""

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal or enabled and os.environ.get("NAS_FORCE_PROGRESS")
        self.name, self.total = name, total

    def __enter__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if not self.enabled:
            return self._plain
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("running {task.fields[running]} · failed {task.fields[failed]} · "
                       "front {task.fields[front]} · HV {task.fields[hv]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
            transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task(self.name, total=self.total, running=0, failed=0, front=0, hv="-")
        return self._update

    def _update(self, p) -> None:
        hv = f"{p.hypervolume:.4g}" if p.hypervolume is not None else "-"
        self.bar.update(self.task, completed=p.done, total=p.total, running=p.running, failed=p.failed,
                        front=p.front, hv=hv)

    def _plain(self, p) -> None:
        key = (p.done, p.failed)
        if getattr(self, "_last", None) != key:
            self._last = key
            hv = f"{p.hypervolume:.4g}" if p.hypervolume is not None else "-"
            console.print(f"{p.done}/{p.total} done, {p.running} running, {p.failed} failed, "
                          f"front {p.front}, HV {hv}", highlight=False)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


# ----- evaluate -----------------------------------------------------------------------
@app.command()
def evaluate(
    arch: Path = typer.Option(..., "--arch", help="Architecture JSON file."),
    profile: list[str] = typer.Option(["cpu-1t"], "--profile", help="Hardware profiles (repeat or comma-separate)."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Text files or globs (default: the "
                                             "embedded standard-library corpus)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", min=1, help="Training tokens (default: the tiny "
                                         "space's proxy budget)."),
    tokenizer: str = typer.Option("byte", "--tokenizer", help="'byte' or 'bpe:<vocab size>'."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for training."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0.1, help="Wall-clock cap on "
                                                "training (default: none)."),
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
        check_available(p)
    spec = DataSpec(corpus=tuple(_split(data)) or ("stdlib",), tokenizer=tokenizer)
    spec.validate("--data")
    budget = dataclasses.replace(load_space("tiny").budget, max_seconds=max_seconds)
    if tokens:
        budget = dataclasses.replace(budget, tokens=tokens)
    token_data = prepare(spec)
    if token_data.vocab_size != architecture.vocab_size:
        raise NasError(f"{arch}: vocab_size={architecture.vocab_size} does not match the tokenizer "
                       f"{tokenizer!r} (vocab {token_data.vocab_size})")
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
        self.bar = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.fields[loss]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
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
        table.add_row("training", f"{result.proxy.tokens:,} tokens in {result.proxy.seconds:.1f}s "
                                  f"({result.proxy.tokens_per_s:,.0f} tokens/s)")
    for lat in result.latencies:
        table.add_row(f"{lat.profile} prefill", _stats(lat.prefill))
        table.add_row(f"{lat.profile} decode", _stats(lat.decode))
    console.print(table)


def _stats(s) -> str:
    return f"{s.median_ms:.3f} ms (p90 {s.p90_ms:.3f}, CV {100 * s.cv:.1f}%, n={s.n})"


# ----- reading searches -----------------------------------------------------------------
@app.command("ls")
def list_searches(db: Optional[str] = DbOption) -> None:
    """List the searches in the database."""
    from nas.store import Store

    store = Store(db_url(db))
    table = Table("name", "status", "done", "failed", "running", "trials", "front", "hypervolume", "created")
    for s in store.list_searches():
        table.add_row(s.name, s.status, str(s.n_complete), str(s.n_failed), str(s.n_running), str(s.trials),
                      str(s.front_size), f"{s.hypervolume:.4g}" if s.hypervolume is not None else "-",
                      f"{s.created_at:%Y-%m-%d %H:%M}")
    console.print(table if table.row_count else f"no searches in {store.describe_url()}")


def _front(store, name: str):
    from nas.fronts import load_front

    analysis = load_front(store, name)  # shared with `nas serve` and `nas report`
    return analysis.search, analysis.metrics, list(analysis.front), analysis.knee_id


def _print_front(store, name: str) -> None:
    search, objectives, front, knee = _front(store, name)
    table = Table(title=f"Pareto front of {name} ({len(front)} candidates)")
    for col in ["trial", "architecture", "params", *objectives[:4]]:
        table.add_column(col, justify="right" if col != "architecture" else "left")
    for r in front:
        marker = " (knee)" if r.id == knee else ""
        table.add_row(f"{r.trial_number}{marker}", r.architecture.describe(), f"{r.architecture.n_params:,}",
                      *[f"{r.metrics[m]:.4g}" for m in objectives[:4]])
    console.print(table)


@app.command()
def show(name: str = typer.Argument(..., help="Search name."), db: Optional[str] = DbOption) -> None:
    """Show a search's Pareto front as a table."""
    from nas.store import Store

    _print_front(Store(db_url(db)), name)


@app.command("pareto")
def pareto_command(name: str = typer.Argument(..., help="Search name."),
                   fmt: str = typer.Option("csv", "--format", help="csv or json."),
                   db: Optional[str] = DbOption) -> None:
    """Print a search's Pareto front as CSV or JSON."""
    import csv

    from nas.store import Store

    if fmt not in ("csv", "json"):
        raise NasError(f"--format={fmt!r} must be 'csv' or 'json'")
    search, objectives, front, knee = _front(Store(db_url(db)), name)
    rows = [{"trial": r.trial_number, "candidate_id": r.id, "knee": r.id == knee, "arch_hash": r.architecture.hash,
             **{m: r.metrics[m] for m in objectives}, "params": r.architecture.n_params,
             **{f"arch.{k}": v for k, v in r.architecture.to_dict().items()}} for r in front]
    if fmt == "json":
        print(json.dumps({"search": name, "objectives": search.objectives, "front": rows}, indent=2))
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)


# ----- export -------------------------------------------------------------------------------
@app.command("export")
def export_command(
    name: str = typer.Argument(..., help="Search name."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write (must not exist; see --force)."),
    trial: Optional[int] = typer.Option(None, "--trial", min=0, help="Export this trial."),
    pick: Optional[str] = typer.Option(None, "--pick", help="'knee' (of the front) or 'best:METRIC' "
                                       "(e.g. best:val_loss; append :max to maximise)."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="With --pick: only candidates with "
                                              "METRIC<=VALUE or METRIC>=VALUE (repeatable)."),
    train_tokens: Optional[int] = typer.Option(None, "--train-tokens", min=1, help="Train this many more "
                                               "tokens beyond the proxy run before exporting."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export at --out."),
    db: Optional[str] = DbOption,
) -> None:
    """Export a candidate: ONNX graphs, weights, tokenizer, model card and a Hugging Face config."""
    from nas.export import export_candidate, pick_candidate
    from nas.store import Store

    store = Store(db_url(db))
    chosen = pick_candidate(store, name, trial=trial, pick=pick, where=_split(where))
    c = chosen.candidate
    console.print(f"exporting {name} trial {c.trial_number} ({chosen.reason}): "
                  f"{c.architecture.describe()}", highlight=False)
    with _export_progress() as on_progress:
        path = export_candidate(store, chosen.search, c, out, train_tokens=train_tokens, force=force,
                                progress=on_progress)
    info = json.loads((path / "metrics.json").read_text())
    for file in sorted(path.iterdir()):
        console.print(f"  {file.name:<22} {file.stat().st_size:>12,} bytes", highlight=False)
    hf = info["huggingface"]
    console.print(f"wrote {path}; load it with nas.load({str(path)!r})"
                  + (f" or transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})"
                     if hf["mapped"] else f" (no Hugging Face config: {hf['reason']})"), highlight=False)


class _export_progress:
    """Stage lines, and a transient bar while --train-tokens trains."""

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
        self.task = None
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


# ----- browsing ---------------------------------------------------------------------------
@app.command()
def serve(db: Optional[str] = DbOption,
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback "
                                   "needs a token."),
          port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
          token: Optional[str] = typer.Option(None, "--token", help="Required for writes (start/stop "
                                              "a search); default: $NAS_TOKEN.")) -> None:
    """Browse searches in a web browser: Pareto plots, candidates, a JSON API under /api."""
    import uvicorn

    from nas.service import create_app
    from nas.service.auth import LOOPBACK_HOSTS, check_bind, is_loopback, resolve_token
    from nas.store import Store

    secret = resolve_token(token)
    check_bind(host, secret)
    store = Store(db_url(db))
    # On loopback, answer only loopback Host headers: a DNS-rebinding page cannot read us.
    allowed = list(LOOPBACK_HOSTS) if is_loopback(host) else None
    web = create_app(store, token=secret, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving {store.describe_url()} on [bold]http://{shown}:{port}[/]"
                  f"{' (token required for writes)' if secret else ''}; Ctrl-C stops")
    uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command()
def report(name: str = typer.Argument(..., help="Search name."),
           output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write."),
           db: Optional[str] = DbOption) -> None:
    """Write a search's plots and tables as one self-contained, offline HTML file."""
    from nas.report import write_report
    from nas.store import Store

    path = write_report(Store(db_url(db)), name, output)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in any browser, "
                  "no server or network needed")


if __name__ == "__main__":
    main()
