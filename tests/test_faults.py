"""Faults real clusters have, caused for real: the search records each and finishes.

- a Ray worker process killed (SIGKILL) mid-trial: retried ``--max-retries`` times, then failed;
- a candidate too big for the memory its worker may use, a diverging one, a failed export;
- PostgreSQL stopped and started again mid-search: the driver reconnects, loses nothing;
- the driver killed (SIGKILL) on PostgreSQL: resuming finishes the search, loses nothing.

Searches run as the real CLI in a child process (`harness.start`, a session of its own, so
the Ray processes it starts are found and killed with it).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from harness import (
    DATA,
    assert_optuna_agrees,
    kill_session,
    pg_ctl,
    pg_database,
    ray_task_processes,
    search_args,
    start,
    untimed_metrics,
    wait_for,
)
from nas.errors import ExportError
from nas.store import Store
from nas.store.records import HEARTBEAT_SECONDS

pytestmark = pytest.mark.slow
GIB = 2**30


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nas.db'}"


def _state(store: Store, name: str, trial: int) -> str | None:
    found = [c for c in store.candidates(name) if c.trial_number == trial] if store.find_search(name) else []
    return found[0].state if found else None


def test_worker_killed_mid_trial_is_retried_then_failed_with_the_reason(tmp_path):
    db = _sqlite(tmp_path)
    # One training task at a time, so each `ray::train` process belongs to a known trial.
    proc = start(search_args("kill", db, trials=2, extra=["--workers", "1", "--max-retries", "1"]))
    killed: list[int] = []

    def kill_next() -> bool:
        for worker in ray_task_processes(proc.pid, "train"):
            if worker.pid not in killed:
                worker.kill()  # SIGKILL, as the OOM killer or a lost machine would
                killed.append(worker.pid)
                return True
        return False

    try:
        with Store(db) as store:
            wait_for(kill_next, 120, "trial 0's training worker", proc, interval=0.05)
            wait_for(kill_next, 120, "trial 0's retry", proc, interval=0.05)  # its last try
            wait_for(lambda: _state(store, "kill", 0) == "failed", 60, "trial 0 to fail", proc)
            wait_for(kill_next, 120, "trial 1's training worker", proc, interval=0.05)  # retried, passes
            _out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            assert len(killed) == 3
            assert store.get_search("kill").status == "finished"
            failed, passed = store.candidates("kill")
            assert failed.state == "failed" and passed.state == "complete"
            assert failed.error.startswith("training worker failed after 1 retries: WorkerCrashedError"), \
                failed.error
            assert passed.metrics["val_loss"] > 0 and passed.latencies and passed.has_weights
            assert_optuna_agrees(store, "kill")
    finally:
        if proc.poll() is None:
            kill_session(proc)


def test_candidate_out_of_memory_fails_with_its_reason_and_the_search_goes_on(tmp_path):
    # An address-space limit on every process of the search: far above what Ray and a normal
    # candidate map (~14 GiB for the raylet on a 23 GiB machine), far below the huge candidate.
    limit = 32 * GIB + psutil.virtual_memory().total
    space = yaml.safe_load((DATA / "oom.yaml").read_text())
    small, huge = space["architecture"]["d_model"]["choices"]
    while 4 * huge * huge <= 2 * limit:  # a machine with much more memory: make it bigger still
        huge *= 2
    space["architecture"]["d_model"]["choices"] = [small, huge]
    path = tmp_path / "oom.yaml"
    path.write_text(yaml.safe_dump(space))
    db = _sqlite(tmp_path)
    result = subprocess.run(
        search_args("oom", db, trials=2, space=path),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert result.returncode == 0, result.stderr
    with Store(db) as store:
        assert store.get_search("oom").status == "finished"
        by_width = {c.architecture.d_model: c for c in store.candidates("oom")}
        assert set(by_width) == {small, huge}
        assert by_width[huge].state == "failed"
        assert by_width[huge].error.startswith("out of memory: RuntimeError:"), by_width[huge].error
        assert "can't allocate memory" in by_width[huge].error
        assert by_width[small].state == "complete" and by_width[small].latencies


def test_diverging_candidates_fail_with_their_reason_and_the_search_finishes(tmp_path):
    db = _sqlite(tmp_path)
    result = subprocess.run(
        search_args("diverge", db, trials=2, space=DATA / "diverge.yaml"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2 failed" in result.stdout
    with Store(db) as store:
        assert store.get_search("diverge").status == "finished"
        records = store.candidates("diverge")
        assert len(records) == 2
        for record in records:
            assert record.state == "failed"
            assert record.error.startswith("training diverged: training loss "), record.error
            assert record.proxy["status"] == "diverged"  # the partial run is kept for the user
        assert_optuna_agrees(store, "diverge")


def test_failed_export_fails_the_candidate_with_its_reason(monkeypatch):
    """No real input makes our exporter fail (its parity check holds for every architecture the
    space can build), so the exporter is replaced: in-process `evaluate`, the Ray task's body."""
    import nas.onnx_export
    from nas.architecture import Architecture
    from nas.data import prepare
    from nas.evaluate import evaluate
    from nas.hardware import load_profile
    from nas.space import load_space

    def broken_export(*args, **kwargs):
        raise ExportError("decode.onnx differs from PyTorch by 0.5 (max abs; tolerance 1e-4)")

    monkeypatch.setattr(nas.onnx_export, "export_onnx", broken_export)
    space = load_space(DATA / "e2e.yaml")
    arch = Architecture(n_layer=1, d_model=16, n_head=1, n_kv_head=1, vocab_size=256, max_seq_len=64)
    result = evaluate(arch, space.budget, prepare(space.data), [load_profile(DATA / "e2e-1t.yaml")])
    assert result.state == "failed"
    assert result.error == "decode.onnx differs from PyTorch by 0.5 (max abs; tolerance 1e-4)"
    assert result.proxy is None and not result.latencies and result.weights is None


@pytest.mark.postgres
def test_postgres_restart_mid_search_loses_nothing(postgres_url, tmp_path):
    # Trials long enough (~15 s each here) that the second is still training when the server
    # stops: with the e2e space's sub-second trials the search could finish before the outage.
    space = yaml.safe_load((DATA / "e2e.yaml").read_text())
    space["budget"]["tokens"] = 1_500_000
    space_file = tmp_path / "slow-e2e.yaml"
    space_file.write_text(yaml.safe_dump(space))
    with pg_database(postgres_url) as db:
        proc = start(search_args("pg-restart", db, trials=2, space=space_file,
                                 extra=["--workers", "1", "--no-retime"]))
        try:
            with Store(db) as store:
                wait_for(lambda: _state(store, "pg-restart", 0) == "complete", 180, "a first result", proc)
                store.close()  # our own connections must not keep the server from stopping
                pg_ctl("stop")  # every connection of the driver drops; its writes fail meanwhile
                # Longer than the heartbeat interval: the driver's stop poll (every second) and
                # its heartbeat (every 5 s) both meet the outage, however busy the machine is.
                time.sleep(HEARTBEAT_SECONDS + 1.0)
                pg_ctl("start")
                assert proc.poll() is None, "the search ended before the outage: nothing was tested"
                _out, err = proc.communicate(timeout=240)
                assert proc.returncode == 0, err
                assert "retrying" in err  # the outage was met, and survived
                assert store.get_search("pg-restart").status == "finished"
                records = store.candidates("pg-restart")
                # Two candidates; a number is skipped when an ask was retried over the outage.
                assert len(records) == 2 and records[0].trial_number == 0
                for record in records:
                    assert record.state in ("complete", "failed")
                    if record.state == "complete":
                        assert record.metrics and record.latencies and record.has_weights
                assert_optuna_agrees(store, "pg-restart", lost_asks=True)
        finally:
            if proc.poll() is None:
                kill_session(proc)
            pg_ctl("start")


@pytest.mark.postgres
def test_driver_killed_then_resumed_on_postgres_loses_and_repeats_nothing(postgres_url):
    with pg_database(postgres_url) as db:
        proc = start(search_args("pg-kill", db, trials=2, extra=["--workers", "1"]))
        try:
            with Store(db) as store:
                wait_for(lambda: _state(store, "pg-kill", 0) == "complete", 180, "a first result", proc)
                kill_session(proc, signal.SIGKILL)  # the driver and its Ray, without cleaning up
                before = {
                    r.trial_number: r
                    for r in store.candidates("pg-kill")
                    if r.state in ("complete", "failed")
                }
                running = store.running_trials("pg-kill")
                result = subprocess.run(
                    search_args("pg-kill", db, trials=2, extra=["--workers", "1"]),
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert result.returncode == 0, result.stderr
                after = {r.trial_number: r for r in store.candidates("pg-kill")}
                assert store.get_search("pg-kill").status == "finished"
                # Two candidates; killed between an ask and its store write, the resumed driver
                # fails that trial in Optuna and asks a new one, so a number may be skipped.
                assert len(after) == 2 and 0 in after and not store.running_trials("pg-kill")
                for trial, record in before.items():  # kept as they were, not re-run
                    assert after[trial].finished_at == record.finished_at
                    assert untimed_metrics(after[trial].metrics) == untimed_metrics(record.metrics)
                    assert store.latency_history(record.id)[0] == record.latencies[0]
                for trial in running:  # re-run under the same trial number
                    assert after[trial].state in ("complete", "failed") and after[trial].attempts == 2
                assert_optuna_agrees(store, "pg-kill", lost_asks=True)
        finally:
            if proc.poll() is None:
                kill_session(proc)


@pytest.mark.postgres
def test_optuna_storage_calls_wait_out_a_postgres_outage(postgres_url):
    """Optuna gives up on a dropped connection (StorageInternalError); the driver's Optuna
    calls go through `nas.search.study.retry_transient`, which retries them as the store retries its own."""
    import optuna

    from nas.hardware import load_profiles
    from nas.search import SearchRequest
    from nas.search.study import SearchStudy, transient_cause
    from nas.space import load_space

    with pg_database(postgres_url) as db, Store(db) as store:
        request = SearchRequest(retime=False,
            space=load_space(DATA / "e2e.yaml"),
            name="outage",
            profiles=load_profiles([DATA / "e2e-1t.yaml"]),
            trials=1,
            db_url=db,
        )
        study = SearchStudy.open(request.space, store, request.name)
        pg_ctl("stop")
        try:
            with pytest.raises(Exception) as raw:  # what the driver would meet without retrying:
                study.optuna_study.ask()  # the trial is made in memory,
                study.storage.flush()  # and written to the database with its parameters
            assert transient_cause(raw.value) is not None
            restart = threading.Timer(1.5, pg_ctl, args=("start",))
            restart.start()
            trial, arch = study.ask()  # waits for the server, then asks
            restart.join()
        finally:
            pg_ctl("start")
        assert request.space.contains(arch)
        # The failed attempt's trial is written first (a lost ask, failed by `repair`): numbers
        # stay dense and agree with the database.
        assert trial.number == 1
        assert [t.number for t in study.optuna_study.get_trials(deepcopy=False)] == [0, 1]
        stored = optuna.load_study(study_name=study.optuna_study.study_name, storage=db)
        assert [(t.number, t.params) for t in stored.get_trials()] == [
            (t.number, t.params) for t in study.optuna_study.get_trials()]
