"""`nas show` of a re-timed search on a workload profile: intervals, unresolved pairs, re-timings,
and one trial's measurements (the one in force and the earlier ones).

The search is written through the real SQLite store (`service.workloads`) and read by the real
command in this process (Typer's CliRunner), so nothing is trained or timed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from service.workloads import LONG, MACHINE, OBJECTIVE, RETIMED, SEARCHED, make_retimed_search
from typer.testing import CliRunner

from nas.cli import app
from nas.store import Store


def invoke(*args: str):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('show')) / 'nas.db'}"
    with Store(url) as store:
        make_retimed_search(store, "long")
    return url


def table_rows(output: str, title: str) -> dict[str, list[str]]:
    """The body rows of the table titled ``title...`` by their first cell."""
    rows: dict[str, list[str]] = {}
    inside = False
    for line in output.splitlines():
        if line.strip().startswith(title):
            inside = True
            continue
        if inside and line.startswith("└"):
            break
        if inside and line.startswith("│"):
            cells = [c.strip() for c in line.rstrip().split("│")[1:-1]]  # empty cells kept
            if cells[0] and not cells[0].startswith(("trial", "#", "quantity", "measurement")):
                rows[cells[0]] = cells
    return rows


def test_show_marks_intervals_and_the_unresolved_pair(db):
    result = invoke("show", "long", "--db", db)
    assert result.exit_code == 0, result.output
    out = result.stdout
    front = {key.split(" ")[0]: cells for key, cells in table_rows(out, "Pareto front of long").items()}
    assert sorted(front) == ["0", "2", "3"]
    median, (lo, hi) = RETIMED[2]
    assert front["2"][-1] == f"{median:.4g} [{lo:.4g}, {hi:.4g}] ≈"  # the objective's column
    lo3, hi3 = RETIMED[3][1]
    assert front["3"][-1] == f"{RETIMED[3][0]:.4g} [{lo3:.4g}, {hi3:.4g}]"  # resolved: no mark
    assert (f"≈ order not resolved by re-timing 1 (95% intervals overlap): trial 2 and trial 1 on "
            f"{OBJECTIVE}") in out


def test_show_lists_the_retimings(db):
    out = invoke("show", "long", "--db", db).stdout
    (retime,) = table_rows(out, "Re-timings of long").values()
    number, _when, machine, profiles, members, entered, left, unresolved, rounds, seconds = retime
    assert (number, machine, profiles, members) == ("1", MACHINE.summary, LONG, "4")
    assert (entered, left, unresolved, rounds, seconds) == ("3", "1", "1", "2", "1.5")


def test_show_all_marks_the_pair_on_both_members(db):
    out = invoke("show", "long", "--all", "--db", db).stdout
    rows = table_rows(out, "Trials of long")
    assert rows["1"][1] == "dominated" and rows["1"][-2].endswith("≈")  # the objective, before error
    assert rows["2"][-2].endswith("≈") and not rows["0"][-2].endswith("≈")
    assert rows["4"][-2] == f"{SEARCHED[4][1]:.4g}"  # never re-timed: its value alone


def test_show_trial_lists_every_measurement(db):
    result = invoke("show", "long", "--trial", "2", "--db", db)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Trial 2 on {LONG} (measurement 1: re-timing 1)" in out
    quantities = table_rows(out, f"Trial 2 on {LONG}")
    assert list(quantities) == ["prefill_ms", "decode_ms", "decode_ms@2048", "ttft_ms", "generate_ms"]
    median, (lo, hi) = RETIMED[2]
    assert quantities["decode_ms@2048"][1] == f"{median:.4g}"
    assert quantities["decode_ms@2048"][4] == f"[{lo:.4g}, {hi:.4g}]"
    assert "peak 22 MB measured vs 20 MB estimated (+2 MB)" in out and f"measured on {MACHINE.summary}" in out
    (searched,) = table_rows(out, f"Earlier measurements of trial 2 on {LONG}").values()
    assert searched[0] == "0" and searched[1] == MACHINE.summary
    assert searched[4] == f"{SEARCHED[2][1]:.4g}"  # decode_ms@2048 as the search measured it
