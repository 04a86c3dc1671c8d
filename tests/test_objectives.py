"""nas.objectives: the one parser of objective and constraint names, and their evaluation."""

from __future__ import annotations

import math

import pytest

from nas.architecture import Architecture, static_metrics
from nas.errors import ConfigError, SearchError
from nas.objectives import (
    Constraint,
    Objective,
    check_static,
    constraint_dict,
    is_feasible,
    latency_profile,
    metric_problem,
    objective_values,
    parse_constraints,
    parse_objectives,
)
from nas.pick import parse_where


def test_metric_names():
    assert metric_problem("val_loss", ()) is None and metric_problem("params", ()) is None
    assert metric_problem("latency:cpu-1t:decode_ms", ["cpu-1t"]) is None
    assert "not in profiles=[]" in metric_problem("latency:cpu-1t:prefill_ms", [])
    assert "unknown metric 'speed'" in metric_problem("speed", ["cpu-1t"])
    assert latency_profile("latency:cpu-2t:prefill_ms") == "cpu-2t" and latency_profile("params") is None


def test_objectives_parse_from_a_space_section():
    got = parse_objectives({"val_loss": "min", "latency:cpu-1t:decode_ms": "MIN"}, ["cpu-1t"])
    assert got == (Objective("val_loss"), Objective("latency:cpu-1t:decode_ms"))
    assert parse_objectives(["params:max", {"val_loss": "min"}], []) == (
        Objective("params", "max"), Objective("val_loss"))
    with pytest.raises(ConfigError, match=r"^s.yaml: objectives.val_loss='minimize' must be 'min' or 'max'$"):
        parse_objectives({"val_loss": "minimize"}, [], source="s.yaml")
    with pytest.raises(ConfigError, match="names a metric twice"):
        parse_objectives(["params:min", "params:max"], [])


def test_constraint_text_is_canonical_and_parses_back():
    c = Constraint.parse("params<=5e6")
    assert (c.metric, c.op, c.bound) == ("params", "<=", 5e6) and c.text == "params <= 5000000"
    assert Constraint.parse(c.text) == c and c.is_static
    assert not Constraint.parse("latency:cpu-1t:decode_ms >= 0.25").is_static
    for bad, reason in [("params < 5", "uses '<'"), ("params 5", "must look like"),
                        ("params <= five", "not a number"), ("params <= inf", "finite")]:
        with pytest.raises(ConfigError, match=reason):
            Constraint.parse(bad)


def test_space_and_where_share_the_parser():
    (c,) = parse_constraints(["params <= 1e6"], [])
    assert parse_where("params<=1e6") == c
    with pytest.raises(ConfigError, match=r"^s.yaml: constraints\[0\]='params < 1' uses '<'"):
        parse_constraints(["params < 1"], [], source="s.yaml")
    with pytest.raises(ConfigError, match="METRIC<=NUMBER"):
        parse_where("params < 1")
    with pytest.raises(ConfigError, match="lists a constraint twice"):
        parse_constraints(["params <= 1e6", "params<=1000000"], [])


def test_evaluation_follows_optunas_convention():
    bounds = (Constraint("params", ">=", 100.0), Constraint("latency:x:decode_ms", "<=", 2.0))
    assert constraint_dict(bounds, {"params": 150, "latency:x:decode_ms": 3.0}) == {
        "params >= 100": -0.5, "latency:x:decode_ms <= 2": 0.5}
    assert constraint_dict(bounds, {"params": 150}, partial=True)["latency:x:decode_ms <= 2"] == 0.0
    with pytest.raises(SearchError, match="needed by constraint"):
        constraint_dict(bounds, {"params": 150})
    assert is_feasible(bounds, {"params": 150}, partial=True)
    assert bounds[1].violation(math.nan) == math.inf
    assert objective_values([Objective("params")], {"params": 3}) == [3.0]
    arch = Architecture()
    (reason,) = check_static((Constraint("params", "<=", 10.0),), arch)
    assert reason == f"params={arch.n_params} violates params <= 10"
    assert check_static(bounds, arch) == [] or static_metrics(arch)["params"] < 100
