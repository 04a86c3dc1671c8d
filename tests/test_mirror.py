"""The driver's Optuna storage: memory for reads, the database written through.

Checked against the database itself: after asks, tells, a creation whose commit went through
but whose acknowledgement was lost, and a retried tell of a trial the database already
finished, the database and memory hold the same trials under the same numbers.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from nas.search.mirror import MirroredStorage, WriterStorage


def _open(url: str) -> tuple[optuna.Study, MirroredStorage]:
    storage = MirroredStorage(WriterStorage(url))
    study = optuna.create_study(study_name="s", storage=storage, directions=["minimize", "minimize"],
                                load_if_exists=True)
    return study, storage


def _ask(study: optuna.Study, storage: MirroredStorage) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_int("n_layer", 1, 8)
    trial.suggest_categorical("attention", ["softmax", "linear"])
    storage.flush()
    return trial


def _same(storage: MirroredStorage, url: str) -> list[Any]:
    stored = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
    memory = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    view = [(t.number, t.state, t.params, t.values, t.user_attrs) for t in stored]
    assert view == [(t.number, t.state, t.params, t.values, t.user_attrs) for t in memory]
    return view


def test_writes_reach_the_database_and_a_reopen_reads_them_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, storage = _open(url)
    trials = [_ask(study, storage) for _ in range(4)]
    trials[0].set_user_attr("nas:repeat_of", 3)
    study.tell(trials[0], [1.0, 2.0])
    study.tell(trials[1], state=TrialState.PRUNED)
    view = _same(storage, url)
    assert [v[1] for v in view] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                    TrialState.RUNNING]
    again, storage2 = _open(url)  # a resumed driver: memory loaded from the database
    assert [t.number for t in again.get_trials()] == [0, 1, 2, 3]
    study_id = storage2.get_study_id_from_name("s")
    trial = optuna.Trial(again, storage2.get_trial_id_from_study_id_trial_number(study_id, 2))
    again.tell(trial, [0.5, 0.5])
    assert _ask(again, storage2).number == 4
    _same(storage2, url)


def test_a_lost_acknowledgement_neither_duplicates_nor_skews_numbers(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, storage = _open(url)
    _ask(study, storage)
    create = storage.backend.create_new_trial
    calls = {"n": 0}

    def committed_then_lost(*args: Any, **kwargs: Any) -> int:
        result = create(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return result

    monkeypatch.setattr(storage.backend, "create_new_trial", committed_then_lost)
    with pytest.raises(OperationalError):
        _ask(study, storage)  # trial 1 reached the database; its acknowledgement did not
    retried = _ask(study, storage)  # the driver's retry
    assert retried.number == 2
    view = _same(storage, url)
    assert [v[0] for v in view] == [0, 1, 2]  # trial 1 once, not twice


def test_a_retried_tell_of_a_trial_the_database_finished_syncs_memory(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, storage = _open(url)
    trial = _ask(study, storage)
    # The first tell committed in the database, then the connection dropped before memory saw it.
    backend = storage.backend
    stored_id = backend.get_trial_id_from_study_id_trial_number(backend.get_study_id_from_name("s"), 0)
    backend.set_trial_state_values(stored_id, TrialState.COMPLETE, [1.0, 1.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # the driver's tell passes on it
        study.tell(trial, [9.0, 9.0])  # refused by the database: memory copies what it holds
    assert study.get_trials()[0].values == [1.0, 1.0]
    _same(storage, url)


def test_a_trial_and_all_its_parameters_reach_the_database_in_a_few_statements(tmp_path):
    """`WriterStorage` adds a created trial's parameter rows together: the statements of one
    creation do not grow with its parameters, and the database holds each parameter with its
    distribution, as Optuna's own write would. A changed distribution is still refused."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, storage = _open(url)
    statements: list[str] = []
    event.listen(storage.backend.engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: statements.append(sql))

    def ask_with(n_params: int) -> int:
        trial = study.ask()
        for i in range(n_params):
            trial.suggest_int(f"p{i}", 0, 9)
            trial.suggest_categorical(f"c{i}", ["a", "b"])
        statements.clear()
        storage.flush()
        return len(statements)

    assert ask_with(2) == ask_with(12)
    assert ask_with(12) <= 8
    stored = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
    memory = study.get_trials(deepcopy=False)
    assert [(t.params, t.distributions) for t in stored] == [(t.params, t.distributions) for t in memory]
    trial = study.ask()
    with pytest.raises(ValueError, match="different distribution kind"):
        trial.suggest_float("p0", 0.0, 9.0)  # p0 was an integer in every earlier trial


def test_a_tells_constraints_go_in_its_own_transaction(tmp_path):
    """Constraint values set before a tell (one transaction each in Optuna) are held and
    written with the state: one commit a tell, and the database reads them back as memory
    does. A rolled-back tell keeps them for its retry; other attributes are written at once."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, storage = _open(url)
    trial = _ask(study, storage)
    commits: list[int] = []
    event.listen(storage.backend.engine, "commit", lambda _conn: commits.append(1))
    trial.set_user_attr("nas:repeat_of", 7)
    assert len(commits) == 1  # not a constraint: written now
    for key, value in (("latency", -1.5), ("params", 0.25)):
        trial.set_constraint(key, value)
    assert len(commits) == 1 and trial.constraints == {"latency": -1.5, "params": 0.25}
    study.tell(trial, state=TrialState.PRUNED)
    assert len(commits) == 2
    stored = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)[0]
    assert stored.state == TrialState.PRUNED and stored.user_attrs == {"nas:repeat_of": 7}
    assert {k: v for k, v in stored.system_attrs.items() if k.startswith("constraints:")} == \
        {"constraints:latency": -1.5, "constraints:params": 0.25}
    _same(storage, url)


def test_a_failed_tell_keeps_its_constraints_for_the_retry(tmp_path, monkeypatch):
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, storage = _open(url)
    trial = _ask(study, storage)
    trial.set_constraint("latency", 2.0)
    original = RDBStorage.set_trial_state_values
    calls: list[int] = []

    def drops_once(self: Any, *args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            self.scoped_session().rollback()
            raise OperationalError("UPDATE", {}, Exception("connection reset"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", drops_once)
    with pytest.raises(OperationalError):
        study.tell(trial, [1.0, 1.0])
    stored = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)[0]
    assert stored.state == TrialState.RUNNING and "constraints:latency" not in stored.system_attrs
    study.tell(trial, [1.0, 1.0])  # the driver's retry
    stored = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)[0]
    assert stored.state == TrialState.COMPLETE and stored.system_attrs["constraints:latency"] == 2.0
