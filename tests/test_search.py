"""End-to-end searches for real: Ray locally, real training, ONNX export and ONNX Runtime timing.

The `e2e` space (tests/data/e2e.yaml) trains each candidate on 4k tokens, so a trial takes
seconds. The kill test runs the real CLI in a subprocess and kills it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from harness import assert_optuna_agrees, untimed_metrics
from nas.hardware import load_profiles
from nas.search import SearchDriver, SearchRequest
from nas.space import load_space
from nas.store import Store

DATA = Path(__file__).parent / "data"
SPACE = DATA / "e2e.yaml"
PROFILE = DATA / "e2e-1t.yaml"
pytestmark = pytest.mark.slow


def brute_force_front(points: list[list[float]], directions: list[str]) -> set[int]:
    signs = [1 if d == "min" else -1 for d in directions]

    def dominates(a, b):
        a = [s * x for s, x in zip(signs, a)]
        b = [s * x for s, x in zip(signs, b)]
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}


def run_cli(*args: str, db: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args, "--db", db], capture_output=True, text=True,
                          timeout=timeout)


def test_search_end_to_end_matches_reference_front(tmp_path):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    space = load_space(SPACE)
    request = SearchRequest(space=space, name="e2e", profiles=load_profiles([PROFILE]), trials=4, db_url=db)
    store = Store(db)
    outcome = SearchDriver(request, store).run()

    assert outcome.status == "finished"
    records = store.candidates("e2e")
    assert len(records) == 4 and all(r.state in ("complete", "failed") for r in records)
    complete = [r for r in records if r.state == "complete"]
    assert len(complete) >= 3, [r.error for r in records]
    for r in complete:
        assert r.metrics["val_loss"] < 5.6  # better than uniform over 256 bytes (ln 256 = 5.55)
        assert [lat.profile for lat in r.latencies] == ["e2e-1t"]
        assert r.latencies[0].decode.median_ms > 0 and r.latencies[0].node
        assert r.has_weights and len(store.weights(r.id)) > 4 * r.architecture.n_params
        assert r.timings["train"] > 0 and r.timings["export"] > 0

    # The stored front equals a brute-force front of the stored metrics (all feasible here).
    objectives = ["val_loss", "latency:e2e-1t:decode_ms"]
    feasible = [r for r in complete if space.is_feasible(r.metrics)]
    points = [[r.metrics[m] for m in objectives] for r in feasible]
    expected = {feasible[i].id for i in brute_force_front(points, ["min", "min"])}
    snapshot = store.pareto_snapshots("e2e")[-1]
    assert set(snapshot.front_ids) == expected
    assert {r.id for r in outcome.front} == expected

    # Optuna's own view of the same study agrees with the front it was told: the one before the
    # search's closing re-timing, which changes stored latencies (not Optuna's values).
    study = optuna.load_study(study_name="nas:e2e", storage=store.optuna_storage())
    assert study.metric_names == objectives
    retimes = store.retimes("e2e")
    told_front = set(retimes[0].front_before) if retimes else expected
    if retimes:
        assert set(retimes[0].front_after) == expected
    assert {t.number for t in study.best_trials} == {r.trial_number for r in complete
                                                     if r.id in told_front}
    # Resuming a finished search trains nothing more.
    again = SearchDriver(request, store).run()
    assert again.status == "finished" and len(store.candidates("e2e")) == 4


def _wait_for(store: Store, name: str, n_complete: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"search exited early: {proc.stderr.read() if proc.stderr else ''}")
        found = store.find_search(name)
        if found is not None:
            done = [c for c in store.candidates(name) if c.state in ("complete", "failed")]
            if len(done) >= n_complete:
                return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {n_complete} finished candidates")


def _start(db: str, trials: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "nas", "search", str(SPACE), "--name", "k", "--trials", str(trials),
            "--profiles", str(PROFILE), "--db", db, "--workers", "1", "--no-progress"]
    # A session of its own, so SIGKILL reaches the driver and every Ray process it started.
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_ctrl_c_then_kill_9_then_resume_loses_and_repeats_nothing(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)

    # 1. Ctrl-C: a clean stop, marked stopped, every stored result whole.
    proc = _start(db, trials=6)
    _wait_for(store, "k", 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # a stop, not a finish: scripts can tell
    assert "Resume with" in out
    assert store.get_search("k").status == "stopped"
    for record in store.candidates("k", states=["complete"]):
        assert record.metrics and record.latencies and record.has_weights

    # 2. kill -9 mid-run: the driver and its Ray processes die without cleaning up.
    proc = _start(db, trials=6)
    _wait_for(store, "k", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {r.trial_number: r for r in store.candidates("k") if r.state in ("complete", "failed")}
    left_running = store.running_trials("k")
    # Its heartbeat stops: once stale, readers see a lost driver and no trial still running.
    monkeypatch.setattr("nas.store.records.STALE_AFTER_SECONDS", 1.0)
    deadline = time.monotonic() + 10
    while store.get_search("k").status != "driver lost" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get_search("k").status == "driver lost"
    summary = next(s for s in store.list_searches() if s.name == "k")
    assert summary.n_running == 0 and summary.n_interrupted == len(left_running)
    monkeypatch.undo()

    # 3. Resume: only the missing trials run; nothing finished is lost or recomputed.
    result = run_cli("search", str(SPACE), "--name", "k", "--trials", "6", "--profiles", str(PROFILE),
                     "--workers", "1", "--no-progress", db=db)
    assert result.returncode == 0, result.stderr
    after = {r.trial_number: r for r in store.candidates("k")}
    assert store.get_search("k").status == "finished"
    assert sum(r.state in ("complete", "failed") for r in after.values()) == 6
    assert not store.running_trials("k")
    for trial, record in before.items():
        assert after[trial].finished_at == record.finished_at
        # Latencies change only through the closing re-timing's new measurement; the search's
        # own measurement is kept as it was.
        assert untimed_metrics(after[trial].metrics) == untimed_metrics(record.metrics)
        assert store.latency_history(record.id)[0] == record.latencies[0]
        assert after[trial].attempts == record.attempts
    for trial in left_running:  # re-run under the same trial number
        assert after[trial].state in ("complete", "failed") and after[trial].attempts >= 2
    # Killed between an ask and its store write, the driver leaves a trial that resume fails.
    assert_optuna_agrees(store, "k", lost_asks=True)
    study = optuna.load_study(study_name="nas:k", storage=store.optuna_storage())
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


@pytest.mark.parametrize("yaml_text, message", [
    ("name: bad\nobjectives: {val_loss: min}\narchitecture:\n  n_layers: 3\n", "n_layers"),
    ("name: bad\nobjectives: {val_loss: min}\narchitecture:\n  d_model: {choices: []}\n", "d_model"),
    ("name: bad\nobjectives:\n  speed: min\n", "speed"),
])
def test_bad_space_file_is_a_named_error(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    result = run_cli("search", str(path), "--no-progress", db=f"sqlite:///{tmp_path / 'x.db'}", timeout=60)
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_search_name_reused_with_another_space_is_refused(tmp_path):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    space = load_space(SPACE)
    store.create_search("taken", space={"other": True}, space_hash="0" * 16, profiles=[], objectives=[],
                        constraints=[], data={}, budget={}, trials=1, study_name="nas:taken")
    result = run_cli("search", str(SPACE), "--name", "taken", "--profiles", str(PROFILE), "--no-progress",
                     db=db, timeout=60)
    assert result.returncode == 2
    assert "already exists with a different search space" in result.stderr
    assert space.hash in result.stderr


def test_unknown_timing_policy_is_a_named_error():
    from nas.errors import ConfigError

    with pytest.raises(ConfigError, match="timing='sometimes' must be one of exclusive, overlap"):
        SearchRequest(space=load_space(SPACE), name="p", profiles=(), trials=1, timing="sometimes")


@pytest.mark.parametrize("cores, workers, threads, fits", [
    ([0, 1], 2, 1, False),  # 2 cores: one times, one trains; a second worker shares it
    ([0, 1], 1, 1, True),
    ([0, 1, 2, 3], 3, 1, True),
    ([0, 1, 2, 3], 2, 2, False),
    ([0, 1], None, 1, True),  # the default is one worker per training core
])
def test_more_workers_than_training_cores_gets_a_note(cores, workers, threads, fits):
    profile = load_profiles([PROFILE])[0]
    request = SearchRequest(space=load_space(SPACE), name="p", profiles=(profile,), trials=2,
                            workers=workers, train_threads=threads)
    note = request.oversubscription(cores)
    if fits:
        assert note is None
    else:
        assert f"--workers {workers} x --threads {threads}" in note
        assert f"--workers {max(1, (len(cores) - 1) // threads)} fits" in note
