"""Start searches for ``POST /api/searches``: the same driver, as its own process.

A search runs as ``python -m nas search <space> --name N ...``, so it outlives a restarted
server and is stopped like any other search (its status set to ``stopping`` in the store).
Everything from the request is checked before it gets near a process or a file:

* names (search, space, profiles) match `NAME_PATTERN` and must name what is shipped;
* YAML is parsed and validated by `SearchSpace.from_yaml_text` in this process; it may not
  point at server files (``data.corpus`` must be the embedded ``stdlib``) and is written to
  a private directory this server created, under a name it chose;
* the child gets an argv list (never a shell) and the database URL in its environment, so
  a password does not show in ``ps``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nas.errors import ConfigError, NasError
from nas.names import NAME_RE, check_name  # one name rule for the CLI and the API
from nas.states import LIVE_STATUSES

MAX_TRIALS = 10_000
MAX_YAML_BYTES = 64 * 1024
_LOG_TAIL_BYTES = 4000


class Conflict(NasError):
    """The request clashes with the search's state (already running, nothing to stop...): 409."""


@dataclass
class Launch:
    name: str
    argv: list[str]
    log_path: Path
    process: Any  # subprocess.Popen (or a test double with pid/poll)
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def returncode(self) -> int | None:
        """None while it runs (the child is reaped by `_reap_when_done` as soon as it ends)."""
        return self.process.poll()

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


Spawn = Callable[..., Any]


class Launcher:
    """Validates launch requests and starts `nas search` processes against ``db_url``."""

    def __init__(self, db_url: str, workdir: Path | None = None,
                 spawn: Spawn = subprocess.Popen) -> None:
        self.db_url = db_url
        self._workdir = workdir
        self._spawn = spawn
        self._launches: dict[str, Launch] = {}
        self._lock = threading.Lock()

    @property
    def workdir(self) -> Path:
        """A private (0700) directory for the YAML and logs of launched searches."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="nas-serve-"))
        for sub in ("spaces", "logs"):
            (self._workdir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._workdir

    def get(self, name: str) -> Launch | None:
        with self._lock:
            return self._launches.get(name)

    def running(self, name: str) -> bool:
        launch = self.get(name)
        return launch is not None and launch.returncode() is None

    # ----- validation -------------------------------------------------------------------
    def check(self, *, name: str, space: str | None, space_yaml: str | None,
              profiles: Sequence[str] | None, trials: int | None, store: Any,
              no_fidelity: bool = False) -> list[str]:
        """The `nas search` arguments for this request (ConfigError naming the field otherwise);
        a YAML space is written to the private directory only once it has passed every check."""
        from nas.hardware import list_profiles, load_profiles
        from nas.search import resolve_profiles
        from nas.space import SearchSpace, list_spaces, load_space

        _check_name("name", name)
        if space is not None:
            _check_name("space", space)
            known = list_spaces()
            if space not in known:
                raise ConfigError(f"space={space!r} is not a shipped search space "
                                  f"(known: {', '.join(known)})", field="space", value=space)
            loaded = load_space(space)
        elif space_yaml is not None:
            if len(space_yaml.encode()) > MAX_YAML_BYTES:
                raise ConfigError(f"space_yaml is longer than {MAX_YAML_BYTES} bytes",
                                  field="space_yaml")
            _refuse_server_files(space_yaml)  # before parsing: parsing a parent reads its files
            try:
                loaded = SearchSpace.from_yaml_text(space_yaml, source="space_yaml")
            except ConfigError as err:  # locate the error inside the body's field
                raise ConfigError(str(err).removeprefix("space_yaml: "), source="space_yaml",
                                  field="space_yaml" + (f".{err.field}" if err.field else ""),
                                  value=err.value) from None
            if tuple(loaded.data.corpus) != ("stdlib",):
                raise ConfigError(f"data.corpus={list(loaded.data.corpus)} must be 'stdlib': a "
                                  "search started over HTTP cannot read files on the server",
                                  source="space_yaml", field="space_yaml.data.corpus",
                                  value=list(loaded.data.corpus))
        else:
            raise ConfigError("give 'space' or 'space_yaml'", field="space")
        shipped = list_profiles()
        checks = [("profiles", list(profiles or ()))]
        if space_yaml is not None:  # a shipped space's own profiles are shipped too
            checks.append(("space_yaml.profiles", list(loaded.profiles)))
        for key, names in checks:
            for p in names:
                if not isinstance(p, str) or not NAME_RE.match(p) or p not in shipped:
                    raise ConfigError(f"{key}: {p!r} is not a shipped hardware profile "
                                      f"(known: {', '.join(shipped)})", field=key, value=p)
        chosen = list(profiles) if profiles else list(loaded.profiles)
        resolve_profiles(loaded, load_profiles(chosen))  # every latency objective is measured
        if trials is not None and not 1 <= trials <= MAX_TRIALS:
            raise ConfigError(f"trials={trials} must be between 1 and {MAX_TRIALS}",
                              field="trials", value=trials)
        existing = store.find_search(name)
        if existing is not None:
            if existing.status in LIVE_STATUSES or self.running(name):
                raise Conflict(f"search {name!r} is {existing.status}; stop it first or "
                                     "choose another name")
            if existing.space_hash != loaded.hash:
                raise Conflict(f"search {name!r} exists with another search space; "
                                     "choose another name (the same space resumes it)")
            with_rungs = loaded.fidelity is not None and not no_fidelity
            if (existing.fidelity is not None) != with_rungs:
                raise Conflict(f"search {name!r} was started " + (
                    "with successive halving and resumes only that way: drop no_fidelity"
                    if existing.fidelity is not None else
                    "without rungs (no_fidelity) and resumes only that way: set no_fidelity")
                    + ", or choose another name")
        elif self.running(name):
            raise Conflict(f"search {name!r} is already starting")
        target = space if space is not None else str(self._write_yaml(name, space_yaml or ""))
        argv = [sys.executable, "-m", "nas", "search", target, "--name", name,
                "--profiles", ",".join(chosen), "--no-progress"]
        if trials is not None:
            argv += ["--trials", str(trials)]
        if no_fidelity:  # every candidate the whole budget (a resume the other way was refused above)
            argv.append("--no-fidelity")
        return argv

    def _write_yaml(self, name: str, text: str) -> Path:
        path = self.workdir / "spaces" / f"{name}-{secrets.token_hex(4)}.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    # ----- starting ---------------------------------------------------------------------
    def launch(self, name: str, argv: list[str]) -> Launch:
        log_path = self.workdir / "logs" / f"{name}.log"
        env = {**os.environ, "NAS_DB": self.db_url, "PYTHONUNBUFFERED": "1"}
        env.pop("NAS_TOKEN", None)  # the child needs no web credentials
        with self._lock:
            previous = self._launches.get(name)
            if previous is not None and previous.returncode() is None:
                raise Conflict(f"search {name!r} is already starting")
            with open(log_path, "ab") as log:
                # Own session: Ctrl-C on the server does not kill searches it started.
                process = self._spawn(argv, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                      start_new_session=True, shell=False)
            launch = Launch(name, argv, log_path, process)
            self._launches[name] = launch
        _reap_when_done(launch)
        return launch


def _reap_when_done(launch: Launch) -> None:
    """Wait on the child in a daemon thread, so a finished search leaves no zombie
    (``<defunct>``) behind while the server runs, whether or not anyone asks about it.

    ``Popen.wait`` and ``Popen.poll`` share a lock, so pages polling `Launch.returncode`
    meanwhile are safe; a test double without ``wait`` is left alone."""
    wait = getattr(launch.process, "wait", None)
    if callable(wait):
        threading.Thread(target=wait, name=f"nas-reap-{launch.name}", daemon=True).start()


def _check_name(key: str, value: str) -> None:
    check_name(key, value)


def child_db_url(store: Any) -> str:
    """The store's URL as a child process must see it: a relative SQLite path made absolute
    (the child runs in another directory), the password kept (it goes in the environment)."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not url.database.startswith("file:"):
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=False)


def is_memory_store(store: Any) -> bool:
    url = store.engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _refuse_server_files(space_yaml: str) -> None:
    """A space sent over HTTP may not name a parent or a tokenizer file: reading them would let
    a client probe the server's files (an error says whether a path exists). Checked on the raw
    YAML, before the space is parsed; malformed YAML is left to the parser's message."""
    try:
        raw = yaml.safe_load(space_yaml)
    except yaml.YAMLError:
        return
    if not isinstance(raw, dict):
        return
    why = "a search started over HTTP cannot read files on the server"
    if raw.get("parent") is not None:
        raise ConfigError(f"parent={raw['parent']!r} is not allowed: {why} (start a search from a "
                          "parent with `nas search SPACE --parent DIR`)", source="space_yaml",
                          field="space_yaml.parent", value=raw["parent"])
    data = raw.get("data")
    tokenizer = data.get("tokenizer") if isinstance(data, dict) else None
    if isinstance(tokenizer, str) and tokenizer.startswith("file:"):
        raise ConfigError(f"data.tokenizer={tokenizer!r} is not allowed: {why}", source="space_yaml",
                          field="space_yaml.data.tokenizer", value=tokenizer)
