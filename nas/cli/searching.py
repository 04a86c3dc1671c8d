"""`nas search` and `nas evaluate`: run a search (or one architecture) and say what happened."""

from __future__ import annotations

import json
import shlex
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nas.cli import common
from nas.cli.common import EXIT_STOPPED, DbOption, _db_flag, _split, app, db_url, print_search
from nas.errors import NasError
from nas.terminal import LiveProgress, TrainingProgress


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
    no_fidelity: bool = typer.Option(False, "--no-fidelity", help="Give every candidate the whole "
                                     "token budget, ignoring the space's fidelity (successive "
                                     "halving) block. A resumed search keeps how it was started."),
    retime: bool = typer.Option(True, "--retime/--no-retime", help="When the search finishes, "
                                "re-time its front together (`nas retime`) and record what "
                                "changed. --no-retime keeps the values timed during the search."),
    parent: str | None = typer.Option(None, "--parent", help="Derive candidates from this local "
                                      "Hugging Face Llama/Mistral checkpoint (config.json, "
                                      "safetensors, tokenizer.json; or a `nas export` directory) "
                                      "and distil them from it. Default: the space's parent:, if any."),
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
    if parent is not None:
        from nas.space.parent import with_parent

        loaded = with_parent(loaded, parent)
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
                            timing=timing.value, no_fidelity=no_fidelity, retime=retime)
    store = Store(request.db_url)
    common.console.print(f"search [bold]{escape(request.name)}[/]: space {escape(loaded.name)} "
                  f"({escape(str(loaded.source))}), {request.trials} trials, profiles "
                  f"{', '.join(p.name for p in chosen)}, db {escape(store.describe_url())}",
                  highlight=False)
    common.console.print(_rungs_line(request), highlight=False)
    if loaded.parent is not None and loaded.parent_architecture is not None:
        common.console.print(_parent_line(loaded), highlight=False)
    for note in (request.trials_note(), request.oversubscription()):
        if note:
            common.console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    resume = _resume_line(store, request)
    if resume:
        common.console.print(resume, markup=False, highlight=False)
    retimed = len(store.retimes(request.name)) if store.find_search(request.name) else 0
    live = LiveProgress(common.console, request.name, request.effective_trials, enabled=progress)
    with live as on_progress:
        outcome = SearchDriver(request, store, on_progress=on_progress).run()
    print_search(store, request.name, retimes_listed=False)  # as `nas show`, with intervals
    for record in store.retimes(request.name)[retimed:]:
        common.console.print(_retime_line(record), highlight=False)
    common.console.print(f"\nsearch {escape(outcome.name)} {outcome.status} in {outcome.seconds:.0f}s: "
                  f"{outcome.n_complete} complete, {outcome.n_failed} failed"
                  f"{f', {outcome.n_infeasible} infeasible' if outcome.n_infeasible else ''}"
                  f"{f', {outcome.n_pruned} pruned' if outcome.n_pruned else ''}, front of "
                  f"{len(outcome.front)}; {outcome.tokens:,} training tokens.", highlight=False)
    if outcome.status == "stopped":
        command = (_resume_command(space, outcome.name, db) + (" --no-fidelity" if no_fidelity else "")
                   + ("" if retime else " --no-retime")
                   + (f" --parent {shlex.quote(parent)}" if parent else ""))
        common.console.print(f"Resume with: [bold]{escape(command)}[/]",
                      highlight=False, soft_wrap=True)
    # soft_wrap: a terminal may wrap these lines, Rich never breaks a command or URL itself.
    common.console.print(f"Browse it:   [bold]nas serve{escape(_db_flag(db))}[/] then open "
                  f"http://127.0.0.1:8000/searches/{outcome.name}", highlight=False, soft_wrap=True)
    common.console.print(f"Report:      [bold]nas report {escape(outcome.name)}{escape(_db_flag(db))} "
                  "-o report.html[/]", highlight=False, soft_wrap=True)
    if outcome.status == "stopped":
        raise typer.Exit(EXIT_STOPPED)


def _retime_line(record: Any) -> str:
    """The end-of-search re-timing (`nas.retime`) in one line."""
    return (f"front re-timed together: {len(record.members)} candidates on {', '.join(record.profiles)}"
            f", {len(record.entered)} entered and {len(record.left)} left the front, "
            f"{len(record.unresolved)} pair(s) unresolved (marked ≈ in the table above)")


def _parent_line(space: Any) -> str:
    """Where candidates come from, and the wait before the first trains (the teacher cache)."""
    parent, arch, budget = space.parent, space.parent_architecture, space.budget
    line = (f"parent: {escape(parent.path)} ({escape(arch.describe())}, {arch.n_params:,} params): "
            "candidates inherit its weights and are distilled from it")
    if parent.teacher == "cache" and budget.distill_weight > 0:
        line += (f"; first its top-{min(parent.teacher_top_k, arch.vocab_size)} logits on the "
                 f"{budget.steps:,} training batches are cached (one parent forward each)")
    return line


def _rungs_line(request: Any) -> str:
    """How candidates are trained: rung by rung (successive halving) or each to the whole budget."""
    from nas.fidelity import rung_tokens

    fidelity, budget = request.fidelity, request.space.budget
    if fidelity is None:
        return f"training: every candidate to the whole budget ({rung_tokens(None, budget)[0]:,} tokens)"
    rungs = " / ".join(f"{t:,}" for t in rung_tokens(fidelity, budget))
    return (f"training: successive halving, rungs at {rungs} tokens; the top 1/{fidelity.eta} "
            "at each rung go on (--no-fidelity: the whole budget for every candidate)")


def _resume_line(store: Any, request: Any) -> str | None:
    """What a run of an existing search will do, said before it starts (None for a new one).

    Done counts distinct architectures that are complete, failed, infeasible or pruned, as the driver
    counts its budget (`SearchRequest.effective_trials`). A stored search of another space is
    left to the driver, which refuses it with the reason.
    """
    existing = store.find_search(request.name)
    if existing is None or existing.space_hash != request.space.hash:
        return None
    done = len({c.arch_hash for c in store.candidates(request.name,
                                                      states=["complete", "failed", "infeasible",
                                                              "pruned"],
                                                      with_proxy=False)})
    budget = request.effective_trials
    if done >= budget:
        return (f"nothing to do: {request.name} already has {done} trials done (--trials "
                f"{budget}); raise --trials to search on")
    return f"resuming {request.name}: {done} of {budget} done, running {budget - done} more"


def _resume_command(space: str, name: str, db: str | None) -> str:
    import shlex

    return f"nas search {shlex.quote(space)} --name {shlex.quote(name)}{_db_flag(db)}"


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
    with TrainingProgress(common.err_console, budget.tokens, enabled=not as_json) as on_step:
        result = run_evaluation(architecture, budget, token_data, profiles, threads=threads, progress=on_step)
    if as_json:
        print(json.dumps(to_jsonable(result), indent=2, allow_nan=True))
    else:
        _print_result(result)
    if result.state != "complete":
        raise typer.Exit(1)


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
    common.console.print(table)


def _stats(s) -> str:
    return f"{s.median_ms:.3f} ms (p90 {s.p90_ms:.3f}, CV {100 * s.cv:.1f}%, n={s.n})"


