"""Real components for the cluster, fault, concurrency and bad-input tests.

A multi-process Ray cluster (`RayCluster`), a PostgreSQL database per test (`pg_database`)
and a server that can be stopped and started (`pg_ctl`), the `nas` CLI as a child process,
and the bad-input catalogue (`docs/bad-input.md`) parsed into rows tests check against.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SPACE = DATA / "e2e.yaml"
PROFILE = DATA / "e2e-1t.yaml"
EDGE_PROFILE = DATA / "edge-1t.yaml"
BAD_INPUT_DOC = ROOT / "docs" / "bad-input.md"
RAY = Path(sys.executable).with_name("ray")
PG_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect"]


def untimed_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a re-timing leaves alone: a finished search's closing re-timing stores new
    latency (and throughput) values as a new measurement, so a resume may change those."""
    return {k: v for k, v in metrics.items() if not k.startswith(("latency:", "throughput:"))}


def assert_optuna_agrees(store: Any, name: str, lost_asks: bool = False) -> None:
    """Optuna's study holds exactly the store's finished trials, in the same states (an
    ``infeasible`` candidate, never trained, is PRUNED; a PRUNED trial the store lacks is a
    shape-only rejection, which is never stored).

    ``lost_asks``: an ask whose reply was lost (a database outage, a driver killed before the
    store write) is asked again, so Optuna may also hold the lost attempt's trial, which must
    have been failed (never left RUNNING) and never stored.
    """
    import optuna

    from nas.search import REPEAT_ATTR

    study = optuna.load_study(study_name=f"nas:{name}", storage=store.optuna_storage())
    states = {"complete": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL,
              "infeasible": optuna.trial.TrialState.PRUNED, "pruned": optuna.trial.TrialState.PRUNED}
    stored = {c.trial_number: states[c.state] for c in store.candidates(name)}
    # A repeat draw is told its original's result and stored nowhere; one asked while its
    # original was in flight when the driver died is failed by the resume.
    for t in study.trials:
        if REPEAT_ATTR in t.user_attrs:
            assert t.number not in stored, t.number
            assert t.state in (stored.get(t.user_attrs[REPEAT_ATTR]), optuna.trial.TrialState.FAIL), t
    told = {t.number: t.state for t in study.trials if REPEAT_ATTR not in t.user_attrs
            and (t.state != optuna.trial.TrialState.PRUNED or t.number in stored)}
    if lost_asks:
        lost = {n: s for n, s in told.items() if n not in stored}
        assert set(lost.values()) <= {optuna.trial.TrialState.FAIL}, lost
        told = {n: s for n, s in told.items() if n in stored}
    assert told == stored


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             proc: subprocess.Popen | None = None, interval: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; fail early if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}:\n{err}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ----- the nas CLI as a child process ---------------------------------------------------------
def search_args(name: str, db: str, *, trials: int, profiles: Sequence[Path | str] = (PROFILE,),
                space: Path | str = SPACE, extra: Sequence[str] = (), retime: bool = False) -> list[str]:
    """``nas search`` as a child; without the closing re-timing unless asked (tests/test_retime.py
    covers it; elsewhere it only makes the run longer)."""
    return [sys.executable, "-m", "nas", "search", str(space), "--name", name, "--trials", str(trials),
            "--profiles", ",".join(str(p) for p in profiles), "--db", db, "--no-progress",
            "--retime" if retime else "--no-retime", *extra]


def start(argv: Sequence[str], env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """A child in a session of its own, so `kill_session` reaches it and every Ray process it starts."""
    return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, **kwargs)


def kill_session(proc: subprocess.Popen, sig: int = signal.SIGKILL, grace: float = 10.0) -> None:
    """Signal ``proc``'s whole session (it was started with `start`) and reap it."""
    members = [p for p in psutil.process_iter() if _sid(p.pid) == proc.pid]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    _, alive = psutil.wait_procs(members, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def ray_task_processes(root_sid: int, function: str) -> list[psutil.Process]:
    """Ray workers of one session currently running ``function``: Ray retitles a worker
    ``ray::<function name>`` while it runs a task (``ray::IDLE`` between tasks)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if cmdline and cmdline[0].strip() == f"ray::{function}" and _sid(p.pid) == root_sid:
            found.append(p)
    return found


# ----- a real Ray cluster -----------------------------------------------------------------------
@dataclass(frozen=True)
class RayNode:
    id: str
    resources: dict[str, float]


@dataclass
class RayCluster:
    """``ray start --head`` plus ``ray start --address`` nodes, each a process of its own.

    Token authentication is on, with a token made for this cluster and handed to every
    process (head, nodes, drivers) in ``env``: RAY_AUTH_MODE=token plus RAY_AUTH_TOKEN, so
    ~/.ray/auth_token is neither needed nor touched. Each node runs ``ray start --block`` in a
    session of its own; `stop` kills those sessions, so it never touches another Ray on this
    machine (``ray stop`` would kill them all).
    """

    token: str = field(default_factory=lambda: secrets.token_hex(32))
    port: int = field(default_factory=free_port)
    # Short: Ray puts Unix sockets under it, and their paths must fit in 107 bytes.
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nasray-", dir="/tmp")))
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def _ray_start(self, args: list[str]) -> subprocess.Popen:
        # Every port a second node on the same machine would otherwise share is chosen here.
        argv = [str(RAY), "start", "--block", "--disable-usage-stats", "--object-store-memory",
                str(100 * 2**20), "--dashboard-agent-listen-port", str(free_port()),
                "--metrics-export-port", str(free_port()), *args]
        # Its output goes to a file: a pipe nobody reads would block it once full.
        with open(self.temp_dir / f"ray-start-{len(self.procs)}.log", "w") as log:
            proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_head(self, num_cpus: int) -> None:
        self._ray_start(["--head", "--port", str(self.port), "--num-cpus", str(num_cpus),
                         "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                         "--temp-dir", str(self.temp_dir)])
        # No --ray-client-server-port: Ray refuses it unless the optional ray[client] extra
        # is installed, and a fresh install (CI) has only `ray`.

    def add_node(self, num_cpus: int, resources: dict[str, float] | None = None) -> None:
        self._ray_start(["--address", self.address, "--num-cpus", str(num_cpus),
                         "--resources", json.dumps(resources or {})])

    def nodes(self) -> list[RayNode]:
        """The live nodes, as a driver joining the cluster sees them."""
        script = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, "
                  "configure_logging=False); print(json.dumps([{'id': n['NodeID'], 'resources': "
                  "n['Resources']} for n in ray.nodes() if n['Alive']]))")
        try:
            # Short: a driver retries a dead head for minutes; the caller re-checks the nodes.
            out = subprocess.run([sys.executable, "-c", script, self.address], env=self.env,
                                 capture_output=True, text=True, timeout=45)
        except subprocess.TimeoutExpired:
            return []
        if out.returncode != 0:
            return []
        return [RayNode(n["id"], n["resources"]) for n in json.loads(out.stdout.strip().splitlines()[-1])]

    def wait_for_nodes(self, n: int, timeout: float = 90) -> list[RayNode]:
        def ready() -> list[RayNode] | None:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log = (self.temp_dir / f"ray-start-{i}.log").read_text()
                    raise AssertionError(f"`ray start` exited ({proc.returncode}):\n{log}")
            nodes = self.nodes()
            return nodes if len(nodes) >= n else None

        return wait_for(ready, timeout, f"{n} Ray nodes", interval=1.0)

    def stop(self) -> None:
        # SIGKILL: `ray start --block` ignores SIGTERM (measured: still up 20 s later), and a
        # throwaway cluster has nothing to save. Nodes first, the head last.
        for proc in reversed(self.procs):
            kill_session(proc, signal.SIGKILL, grace=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[psutil.Process]:
        sids = {p.pid for p in self.procs}
        return [p for p in psutil.process_iter() if _sid(p.pid) in sids]

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----- PostgreSQL ---------------------------------------------------------------------------------
@contextlib.contextmanager
def pg_database(postgres_url: str) -> Iterator[str]:
    """A database of its own on the server `postgres_url` found, dropped afterwards."""
    import psycopg

    admin = postgres_url.replace("postgresql+psycopg", "postgresql").rsplit("/", 1)[0] + "/postgres"
    name = f"nas_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{postgres_url.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    finally:
        pg_ctl("start")  # a test may have stopped the server: it must be up to drop, and after
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_ctl(action: str) -> None:
    """Start, stop or restart the local PostgreSQL cluster (as `.ci/run` starts it)."""
    if action == "start" and _pg_ready():
        return
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run([*PG_CTL, versions[-1], "main", action], check=True, capture_output=True, timeout=60)
    if action in ("start", "restart"):
        wait_for(_pg_ready, 30, "PostgreSQL to accept connections")


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"]).returncode == 0


# ----- the bad-input catalogue ----------------------------------------------------------------------
@dataclass(frozen=True)
class BadInput:
    """One row of docs/bad-input.md."""

    id: str
    status: int  # CLI exit status or HTTP status
    message: str  # exact text; '…' stands for a part that varies (paths, versions, ports)
    test: str

    def matches(self, text: str) -> bool:
        pattern = ".*?".join(re.escape(part) for part in self.message.split("…"))
        return re.fullmatch(pattern, text.strip(), flags=re.DOTALL) is not None


_ROW = re.compile(r"^\|\s*`(?P<id>[a-z0-9-]+)`\s*\|(?P<input>.*?)\|\s*(?P<status>\d+)\s*\|"
                  r"\s*``\s?(?P<message>.*?)\s?``\s*\|\s*`(?P<test>[^`]+)`\s*\|\s*$")


def bad_inputs() -> dict[str, BadInput]:
    """The catalogue's rows by id. A message is a ``double-backtick`` code span in which
    ``\\|`` is a literal pipe (Markdown tables need it escaped)."""
    rows: dict[str, BadInput] = {}
    for line in BAD_INPUT_DOC.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m:
            assert m["id"] not in rows, f"row {m['id']} is in {BAD_INPUT_DOC.name} twice"
            rows[m["id"]] = BadInput(m["id"], int(m["status"]), m["message"].replace("\\|", "|"),
                                     m["test"])
    return rows


def assert_documented(row_id: str, status: int, text: str) -> None:
    """What the user saw is exactly what docs/bad-input.md says for ``row_id``."""
    row = bad_inputs()[row_id]
    assert status == row.status, f"{row_id}: status {status}, documented {row.status}\n{text}"
    assert row.matches(text), f"{row_id}: the user sees\n  {text.strip()}\nbut the docs say\n  {row.message}"


def cli_error(stderr: str) -> str:
    """The message after ``error:`` that `nas` prints (no traceback allowed)."""
    assert "Traceback" not in stderr, stderr
    starts = [m.end() for m in re.finditer(r"^error: ", stderr, flags=re.MULTILINE)]
    assert starts, f"no 'error:' line on stderr:\n{stderr}"
    return stderr[starts[-1]:].strip()  # a message may span lines (YAML errors quote the file)
