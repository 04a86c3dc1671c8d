"""A search on a real multi-process Ray cluster, with latency bound to the node that is "the device".

The cluster is two `ray start` processes on this machine: a head node and a node started
with the custom resource ``edge_test`` (each with one CPU). The search (the real CLI, in a
child process, on PostgreSQL) measures two profiles: ``e2e-1t`` anywhere and ``edge-1t``
(tests/data/edge-1t.yaml, ``ray_resource: edge_test``) only where ``edge_test`` is. The
stored latency rows must say they ran on that node. Token authentication is on: the head,
the node and the driver share a token made for the cluster (see `harness.RayCluster`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from harness import (
    EDGE_PROFILE,
    PROFILE,
    RayCluster,
    RayNode,
    assert_documented,
    cli_error,
    pg_database,
    search_args,
)
from nas.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[RayCluster, RayNode, RayNode]]:
    """(cluster, head node, edge node); stopped at the end whatever happens."""
    with RayCluster() as ray_cluster:
        ray_cluster.start_head(num_cpus=1)
        ray_cluster.add_node(num_cpus=1, resources={"edge_test": 1})
        nodes = ray_cluster.wait_for_nodes(2)
        edge = next(n for n in nodes if n.resources.get("edge_test"))
        head = next(n for n in nodes if n is not edge)
        yield ray_cluster, head, edge
    assert not ray_cluster.leftovers(), "a process of the test cluster outlived it"


@pytest.mark.postgres
def test_bound_profile_is_measured_on_its_node(cluster, postgres_url):
    ray_cluster, head, edge = cluster
    with pg_database(postgres_url) as db:
        result = subprocess.run(
            search_args("cluster", db, trials=3, profiles=[PROFILE, EDGE_PROFILE],
                        extra=["--ray-address", ray_cluster.address]),
            env=ray_cluster.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        with Store(db) as store:
            assert store.get_search("cluster").status == "finished"
            records = store.candidates("cluster")
            assert len(records) == 3 and all(r.state in ("complete", "failed") for r in records)
            complete = [r for r in records if r.state == "complete"]
            assert len(complete) >= 2, [r.error for r in records]
            node_ids = {head.id, edge.id}
            for record in complete:
                by_profile = {lat.profile: lat for lat in record.latencies}
                assert set(by_profile) == {"e2e-1t", "edge-1t"}
                assert by_profile["edge-1t"].node == edge.id  # only the edge_test node times it
                assert by_profile["e2e-1t"].node in node_ids
                assert by_profile["edge-1t"].decode.median_ms > 0
                assert record.node in node_ids  # training ran on the cluster, not in the driver
                assert record.has_weights


def test_driver_without_the_clusters_token_is_told_how_to_join(cluster, tmp_path):
    ray_cluster, _, _ = cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray retries a refused join for 20 s by default
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    result = subprocess.run(
        search_args("no-token", db, trials=1, extra=["--ray-address", ray_cluster.address]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_documented("ray-token-missing", result.returncode, cli_error(result.stderr))
    with Store(db) as store:  # refused before anything was written
        assert store.find_search("no-token") is None


def test_profile_bound_to_a_resource_no_node_has_is_refused(cluster, tmp_path):
    """Ray would queue its timing tasks forever: the driver refuses before writing anything."""
    ray_cluster, _, _ = cluster
    phone = tmp_path / "phone-1t.yaml"
    phone.write_text(EDGE_PROFILE.read_text().replace("ray_resource: edge_test", "ray_resource: edge_phone"))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    result = subprocess.run(
        search_args(
            "phone", db, trials=1, profiles=[PROFILE, phone], extra=["--ray-address", ray_cluster.address]
        ),
        env=ray_cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_documented("ray-resource-missing", result.returncode, cli_error(result.stderr))
    with Store(db) as store:
        assert store.find_search("phone") is None
