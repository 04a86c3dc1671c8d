"""The `nas` command line: help, exit codes, read-only commands, piped output, rm, resume.

Most tests call the app in this process (CliRunner, or `nas.cli.main` for the console script's
error handling) over synthetic searches written through the store (`service.factories`), so
they train nothing. Exit codes and what a pipe receives are checked on the real process.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from service.factories import (
    FRONT_TRIALS,
    INFEASIBLE_TRIAL,
    RUNG_COUNTS,
    RUNG_TOKENS_SPENT,
    RUNG_TRIALS,
    make_rung_search,
    make_search,
)
from typer.testing import CliRunner

import nas.cli
from harness import DATA, PROFILE, assert_documented, cli_error, wait_for
from nas.cli import app
from nas.errors import ConfigError, NotFoundError, StoreError
from nas.store import Store

SPACE = DATA / "e2e.yaml"


def invoke(*args: str, input: str | None = None):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "200"})


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The console script's entry point in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["nas", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        nas.cli.main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    """A SQLite file with 'demo' (finished: front 0, 1, 2, knee 1; 3, 4 dominated; 5
    infeasible; 6 failed) and 'empty' (one failed trial, no front)."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        make_search(store, "demo")
        make_search(store, "empty", points=[], failed=1)
    return url


# ----- help and conventions ---------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["search"], ["evaluate"], ["ls"], ["show"], ["pareto"],
                                     ["export"], ["serve"], ["report"], ["rm"]])
def test_help_shows_no_bool_metavar_and_h_is_help(command: list[str]) -> None:
    long, short = invoke(*command, "--help"), invoke(*command, "-h")
    assert long.exit_code == 0 and short.exit_code == 0, short.output
    assert short.output == long.output
    assert "<bool>" not in long.output
    assert "Usage:" in long.output


def _help(*command: str) -> str:
    return " ".join(invoke(*command, "--help").output.replace("│", " ").split())


def test_help_lists_choices_defaults_and_one_spelling() -> None:
    search = _help("search")
    assert "<exclusive|overlap>" in search
    assert "Default: one per free training core" in search
    assert "--profiles,--profile" in search
    assert "<csv|json>" in _help("pareto")
    assert "--out,--output" in _help("report") and "--out,--output" in _help("export")
    assert "--profiles,--profile" in _help("evaluate")


def test_version() -> None:
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"nas {version('nas')}"


def test_aliases_are_accepted(tmp_path: Path, db: str) -> None:
    out = tmp_path / "r.html"
    result = invoke("report", "demo", "--output", str(out), "--db", db)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 100_000


# ----- reading searches -------------------------------------------------------------------
def test_ls_json(db: str) -> None:
    result = invoke("ls", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    listed = {s["name"]: s for s in json.loads(result.stdout)}
    assert set(listed) == {"demo", "empty"}
    demo = listed["demo"]
    assert (demo["status"], demo["n_complete"], demo["n_failed"], demo["front_size"]) == ("finished", 6, 1, 3)
    assert demo["created_at"].endswith("+00:00")  # ISO 8601, UTC


def _rows(output: str) -> dict[int, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if line.startswith("│") and cells[0].split(" ")[0].isdigit():
            rows[int(cells[0].split(" ")[0])] = cells
    return rows


def test_show_all_lists_every_trial_with_its_state_and_error(db: str) -> None:
    result = invoke("show", "demo", "--all", "--db", db)
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert sorted(rows) == list(range(7))
    states = {trial: cells[1] for trial, cells in rows.items()}
    assert [states[t] for t in FRONT_TRIALS] == ["front", "front (knee)", "front"]
    assert states[3] == states[4] == "dominated"
    assert states[INFEASIBLE_TRIAL] == "infeasible"
    assert states[6] == "failed" and "diverged" in rows[6][-1]
    # Without --all: the front only, the same trial numbers (people see trial numbers).
    front = _rows(invoke("show", "demo", "--db", db).stdout)
    assert sorted(front) == FRONT_TRIALS and "(knee)" in front[1][0]


@pytest.fixture
def rung_db(tmp_path: Path) -> str:
    """'rungs': a search trained by successive halving, pruned and complete candidates."""
    url = f"sqlite:///{tmp_path / 'rungs.db'}"
    with Store(url) as store:
        make_rung_search(store, "rungs")
    return url


def test_show_lists_the_rungs_and_pruned_candidates(rung_db: str) -> None:
    result = invoke("show", "rungs", "--db", rung_db)
    assert result.exit_code == 0, result.output
    rungs = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("│ ").split("│")] for line in result.stdout.splitlines()
        if line.startswith("│") and " of 3 " in line)}
    assert [(r[1], r[2], r[3]) for r in rungs.values()] == [
        (f"{tokens:,}", str(reached), str(pruned)) for _, tokens, reached, pruned in RUNG_COUNTS]
    assert rungs["3 of 3"][4] == "3 complete" and rungs["1 of 3"][4] == "4"
    assert f"{RUNG_TOKENS_SPENT:,} training tokens spent" in result.stdout
    # Pruned candidates: their own listing, with the reason and the tokens they got.
    pruned = invoke("show", "rungs", "--state", "pruned", "--db", rung_db)
    trials, rung_table = pruned.stdout.split("Rungs of rungs")
    rows = _rows(trials)
    assert sorted(rows) == [k for k, (_, state) in RUNG_TRIALS.items() if state == "pruned"]
    assert rows[3][1] == "pruned" and rows[3][-2] == "1,024"  # the tokens it got
    assert rows[3][-1].startswith("pruned at rung 2 of 3")
    assert "Trials of rungs in state pruned (3 of 6" in trials and "1 of 3" in rung_table
    both = invoke("show", "rungs", "--state", "pruned", "--state", "complete", "--db", rung_db).stdout
    assert sorted(_rows(both.split("Rungs of rungs")[0])) == list(range(6))
    bad = invoke("show", "rungs", "--state", "exploded", "--db", rung_db)
    assert bad.exit_code == 2 and "'pruned'" in bad.output


def test_show_one_trial_with_its_rung_losses(rung_db: str, db: str) -> None:
    result = invoke("show", "rungs", "--trial", "3", "--db", rung_db)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Trial 3 of rungs" in out and "Rung losses of trial 3" in out
    losses = [line for line in out.splitlines() if line.startswith(("│ 1 of 3", "│ 2 of 3", "│ 3 of 3"))]
    assert len(losses) == 2 and "3.9000" in losses[0] and "promoted" in losses[0]
    assert "3.7000" in losses[1] and "pruned here" in losses[1] and "1,024" in losses[1]
    assert "pruned at rung 2 of 3" in out
    complete = invoke("show", "rungs", "--trial", "4", "--db", rung_db).stdout
    assert "front" in complete and "│ 3 of 3 │  2,048 │   2.6000" in complete
    # Without rungs: the trial's numbers, no rung table; an unknown trial is named.
    plain = invoke("show", "demo", "--trial", "1", "--db", db)
    assert "front (knee)" in plain.stdout and "Rung losses" not in plain.stdout
    missing = invoke("show", "demo", "--trial", "99", "--db", db)
    assert isinstance(missing.exception, NotFoundError) and "no trial 99" in str(missing.exception)


def test_ls_counts_pruned_candidates(rung_db: str) -> None:
    table = invoke("ls", "--db", rung_db).stdout
    header = next(line for line in table.splitlines() if "name" in line and "pruned" in line)
    row = next(line for line in table.splitlines() if line.startswith("│ rungs"))
    cells = dict(zip([c.strip() for c in header.strip("┃ ").split("┃")],
                     [c.strip() for c in row.strip("│ ").split("│")]))
    assert (cells["done"], cells["pruned"], cells["failed"]) == ("3", "3", "0")
    listed = json.loads(invoke("ls", "--json", "--db", rung_db).stdout)
    assert listed[0]["n_pruned"] == 3


def test_pareto_of_an_empty_front_prints_the_full_header(db: str) -> None:
    full = invoke("pareto", "demo", "--db", db)
    header = next(csv.reader(io.StringIO(full.stdout)))
    assert header[:4] == ["trial", "candidate_id", "knee", "arch_hash"] and "arch.n_layer" in header
    empty = invoke("pareto", "empty", "--db", db)
    assert empty.exit_code == 0
    assert list(csv.reader(io.StringIO(empty.stdout))) == [header]
    assert "search 'empty' has no Pareto front yet: no trial is complete" in empty.stderr
    as_json = invoke("pareto", "empty", "--format", "json", "--db", db)
    assert json.loads(as_json.stdout)["front"] == [] and "no Pareto front" in as_json.stderr
    assert "no Pareto front" not in full.stderr


@pytest.mark.parametrize("command", [["ls"], ["show", "x"], ["show", "x", "--all"], ["pareto", "x"],
                                     ["report", "x", "-o", "r.html"],
                                     ["export", "x", "--trial", "0", "-o", "out"], ["rm", "x", "--yes"]])
def test_reading_commands_never_create_a_database(command: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*command, "--db", "sqlite:///typo.db")
    assert isinstance(result.exception, StoreError), result.output
    assert "it does not exist" in str(result.exception) and "sqlite:///typo.db" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_missing_postgres_database_is_named(postgres_url: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    # postgres_url skips when no server answers: the row is about a server without the database.
    status, _, err = run_main(["ls", "--db", "postgresql+psycopg://postgres@127.0.0.1:5432/nas_no_such_db"],
                              monkeypatch, capsys)
    assert_documented("db-postgres-missing", status, cli_error(err))


def test_piped_output_is_never_cut(tmp_path: Path) -> None:
    """`nas ls | grep finished`: a pipe gets whole values, whatever $COLUMNS says."""
    long_name = "a-search-name-long-enough-to-be-cut-" + "x" * 28
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        make_search(store, long_name)
    env = {**os.environ, "COLUMNS": "80"}
    listed = subprocess.run([sys.executable, "-m", "nas", "ls", "--db", url], capture_output=True,
                            text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if long_name in line)
    assert "finished" in line.split() or "finished" in line and "…" not in line
    shown = subprocess.run([sys.executable, "-m", "nas", "show", long_name, "--all", "--db", url],
                           capture_output=True, text=True, env=env, timeout=60)
    assert "RuntimeError: <script>alert(1)</script> diverged" in shown.stdout
    assert "…" not in shown.stdout


# ----- names ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../evil", "a b/c", "", "-x", "x\n", "a" * 65, "ünï"])
def test_the_cli_and_the_api_refuse_the_same_names(bad: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    from pydantic import ValidationError

    from nas.service import launcher
    from nas.service.schemas import LaunchIn

    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        launcher._check_name("name", bad)
    with pytest.raises(ValidationError):
        LaunchIn(name=bad, space="tiny")
    db = tmp_path / "nas.db"
    status, _, err = run_main(["search", str(SPACE), "--profiles", str(PROFILE), "--name", bad,
                               "--db", f"sqlite:///{db}", "--no-progress"], monkeypatch, capsys)
    assert status == 2 and f"--name={bad!r} must be 1-64 letters" in cli_error(err)
    assert not db.exists()  # refused before anything was written


@pytest.mark.parametrize("good", ["tiny", "e2e.v2", "A_b-3", "x" * 64])
def test_good_names_pass_everywhere(good: str) -> None:
    from nas.names import check_name
    from nas.service import launcher
    from nas.service.schemas import LaunchIn

    assert check_name("name", good) == good
    launcher._check_name("name", good)
    LaunchIn(name=good, space="tiny")


# ----- report and serve ---------------------------------------------------------------------
def test_report_output_is_checked_before_rendering(tmp_path: Path, db: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.report

    monkeypatch.setattr(nas.report, "render_report", lambda *a: pytest.fail("rendered"))
    for target in (tmp_path / "missing" / "r.html", tmp_path):
        result = invoke("report", "demo", "-o", str(target), "--db", db)
        assert isinstance(result.exception, ConfigError) and str(target) in str(result.exception)


def test_serve_refuses_a_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    monkeypatch.delenv("NAS_TOKEN", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "nas.db"
        status, out, err = run_main(["serve", "--port", str(port), "--db", f"sqlite:///{db}"],
                                    monkeypatch, capsys)
    assert_documented("serve-port-in-use", status, cli_error(err))
    assert "serving" not in out and not db.exists()


# ----- rm ------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nas.db'}"
    return request.getfixturevalue("postgres_url")  # shared by the session: unique names below


def test_rm_deletes_a_search_its_rows_and_its_study_and_nothing_else(any_db: str) -> None:
    import optuna

    gone, kept = f"gone-{uuid.uuid4().hex[:6]}", f"kept-{uuid.uuid4().hex[:6]}"
    with Store(any_db) as store:
        ids = make_search(store, gone)
        make_search(store, kept)  # the same architectures: the same latency cache keys
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name in (gone, kept):
            optuna.create_study(study_name=f"nas:{name}", storage=store.optuna_storage())
        probe = store.candidate(ids[0])
        lat = probe.latencies[0]

        refused = invoke("rm", gone, "--db", any_db, input="n\n")
        assert refused.exit_code == 1 and "nothing deleted" in refused.stderr
        assert store.find_search(gone) is not None

        result = invoke("rm", gone, "--db", any_db, input="y\n")
        assert result.exit_code == 0, result.output
        assert f"deleted search {gone} (7 trials)" in result.stdout
        assert store.find_search(gone) is None
        with pytest.raises(NotFoundError):
            store.candidate(ids[0])
        studies = optuna.study.get_all_study_names(store.optuna_storage())
        assert f"nas:{gone}" not in studies and f"nas:{kept}" in studies
        # The other search keeps everything, and the latency cache still knows the shape.
        assert len(store.candidates(kept)) == 7 and store.pareto_snapshots(kept)
        assert store.cached_latency(probe.arch_hash, lat.profile_hash) is not None
        with store.engine.connect() as conn:
            from sqlalchemy import text

            orphans = conn.execute(text(
                "SELECT count(*) FROM nas_metrics WHERE candidate_id NOT IN (SELECT id FROM nas_candidates)"
            )).scalar()
        assert orphans == 0

        again = invoke("rm", gone, "--yes", "--db", any_db)
        assert isinstance(again.exception, NotFoundError)


def test_rm_refuses_a_live_search_but_not_a_lost_one(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.store.records

    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as store:
        make_search(store, "live", status="running", running=1)
        store.heartbeat("live")
    result = invoke("rm", "live", "--yes", "--db", url)
    assert "is running; stop it before removing it" in str(result.exception)
    monkeypatch.setattr(nas.store.records, "STALE_AFTER_SECONDS", -1.0)  # its driver went quiet
    result = invoke("rm", "live", "--yes", "--db", url)
    assert result.exit_code == 0, result.output
    with Store(url) as store:
        assert store.find_search("live") is None


# ----- search: resume line and exit codes -------------------------------------------------------
def test_resume_says_what_it_does(db: str) -> None:
    from nas.cli import _resume_line

    with Store(db) as store:
        space = SimpleNamespace(hash="hash-demo")
        ask = lambda trials: SimpleNamespace(name="demo", effective_trials=trials, space=space)  # noqa: E731
        assert _resume_line(store, ask(9)) == "resuming demo: 7 of 9 done, running 2 more"
        assert _resume_line(store, ask(7)) == ("nothing to do: demo already has 7 trials done "
                                               "(--trials 7); raise --trials to search on")
        assert _resume_line(store, SimpleNamespace(name="new", effective_trials=3, space=space)) is None
        # A repeated architecture is one trial of the budget, as the driver counts it.
        repeat = store.candidate_by_trial("demo", 0).architecture
        store.start_candidate("demo", 7, repeat)
        store.fail_candidate("demo", 7, "a repeat")
        assert _resume_line(store, ask(9)) == "resuming demo: 7 of 9 done, running 2 more"


@pytest.mark.parametrize("status, code", [("finished", 0), ("stopped", 130)])
def test_search_exits_130_when_stopped(status: str, code: int, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    """Stopped by Ctrl-C, SIGTERM or the API (the driver's outcome says which): 130."""
    from nas.search import SearchDriver, SearchOutcome

    def run(self: SearchDriver) -> SearchOutcome:
        make_search(self.store, self.request.name)
        return SearchOutcome(self.request.name, status, 6, 1, [], None, 1.0)

    monkeypatch.setattr(SearchDriver, "run", run)
    exit_code, out, _ = run_main(["search", str(SPACE), "--profiles", str(PROFILE), "--name", "s",
                                  "--db", f"sqlite:///{tmp_path / 'nas.db'}", "--no-progress"],
                                 monkeypatch, capsys)
    assert exit_code == code
    assert ("Resume with: nas search" in out) == (status == "stopped")
    assert f"search s {status} in" in out


@pytest.mark.slow
def test_ctrl_c_of_a_real_search_exits_130(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(SPACE), "--name", "c",
                             "--trials", "50", "--profiles", str(PROFILE), "--workers", "1",
                             "--db", url, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        with Store(url) as store:
            wait_for(lambda: (store.find_search("c") is not None and store.candidates("c")),
                     180, "the first trial to start", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Resume with" in out
    with Store(url) as store:
        assert store.get_search("c").status == "stopped"
