"""Every row of docs/bad-input.md, checked against what the user really sees.

The catalogue is the source of truth: each test reads its row's exit status (or HTTP status)
and exact message from the table (`harness.bad_inputs`), so the docs and the code cannot
drift apart. CLI rows run `nas.cli.main` (the console script's entry point) in this process
with the working directory set to a fresh folder, so paths in messages are relative; the
HTTP rows call the web service's app. Rows that need a Ray cluster live in test_cluster.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

import nas.cli
from harness import DATA, EDGE_PROFILE, PROFILE, assert_documented, bad_inputs, cli_error, free_port
from nas.service import create_app
from nas.store import Store

BASE_SPACE: dict[str, Any] = yaml.safe_load((DATA / "e2e.yaml").read_text())
ROWS = bad_inputs()


def api_space_yaml(**changes: Any) -> str:
    """The e2e space as YAML text for POST /api/searches, timed on a shipped profile."""
    return yaml.safe_dump({**BASE_SPACE, "profiles": ["cpu-1t"], "objectives": {"val_loss": "min"},
                           **changes})


def space(path: str = "bad.yaml", **changes: Any) -> Callable[[Path], None]:
    """Write the e2e space with ``changes`` (dotted keys; None deletes) to ``path``."""

    def write(cwd: Path) -> None:
        data = copy.deepcopy(BASE_SPACE)
        for dotted, value in changes.items():
            *parents, key = dotted.replace("__", ".").split(".")
            node = data
            for parent in parents:
                node = node.setdefault(parent, {})
            if value is None:
                node.pop(key, None)
            else:
                node[key] = value
        (cwd / path).write_text(yaml.safe_dump(data, sort_keys=False))

    return write


def text_file(path: str, content: str | bytes) -> Callable[[Path], None]:
    def write(cwd: Path) -> None:
        target = cwd / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    return write


def profile(name: str, **fields: Any) -> Callable[[Path], None]:
    data = yaml.safe_load(PROFILE.read_text())
    data.update(fields)
    return text_file(f"{name}.yaml", yaml.safe_dump(data))


def existing_search(name: str = "taken", **overrides: Any) -> Callable[[Path], None]:
    """A search already in ./nas.db, created from the e2e space with some field changed."""

    def create(cwd: Path) -> None:
        from nas.space import load_space

        e2e = load_space(DATA / "e2e.yaml")
        fields = {"space": e2e.to_dict(), "space_hash": e2e.hash, "profiles": [{"name": "e2e-1t"}],
                  "objectives": [], "constraints": [], "data": e2e.data.to_dict(), "budget": {},
                  "trials": 1, "study_name": f"nas:{name}", **overrides}
        with Store(f"sqlite:///{cwd / 'nas.db'}") as store:
            store.create_search(name, **fields)
            store.set_status(name, "finished")

    return create


RUNGS = {"min_tokens": 1024, "eta": 2}  # 1,024 / 2,048 / 4,096 tokens on the e2e budget


def fidelity_search(stored: dict[str, Any] | None) -> Callable[[Path], None]:
    """./bad.yaml: the e2e space with rungs; a search 'taken' of it in ./nas.db, stored with
    ``stored`` as its fidelity (None: started with --no-fidelity)."""

    def create(cwd: Path) -> None:
        from nas.space import load_space

        space(fidelity=RUNGS)(cwd)
        loaded = load_space(cwd / "bad.yaml")
        existing_search(space=loaded.to_dict(), space_hash=loaded.hash, fidelity=stored)(cwd)

    return create


def running_search(name: str) -> Callable[[Path], None]:
    """A search in ./nas.db whose driver is alive: status running, heartbeat just now."""

    def create(cwd: Path) -> None:
        existing_search(name)(cwd)
        with Store(f"sqlite:///{cwd / 'nas.db'}") as store:
            store.set_status(name, "running")
            store.heartbeat(name)

    return create


def parent(path: str = "parent", *, files: tuple[str, ...] = ("config", "weights", "tokenizer"),
           **config: Any) -> Callable[[Path], None]:
    """A tiny transformers Llama saved at ``path`` (2 layers, width 32, 4 heads / 2 kv, 64
    positions, a word-level tokenizer), then only ``files`` kept; ``config`` overrides config.json."""

    def write(cwd: Path) -> None:
        from parents import hf_config, hf_parent

        root = cwd / path
        hf_parent(root, hf_config(max_position_embeddings=64))
        if config:
            data = json.loads((root / "config.json").read_text())
            data.update(config)
            (root / "config.json").write_text(json.dumps(data))
        kept = {"config": ["config.json"], "weights": ["model.safetensors"],
                "tokenizer": ["tokenizer.json"]}
        keep = {name for f in files for name in kept[f]}
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if name not in keep:
                (root / name).unlink()

    return write


# The e2e space searched from `parent()`: values the parent can give, its tokenizer.
FROM_PARENT = {"parent": "parent", "data__tokenizer": None, "architecture": {
    "n_layer": {"choices": [1, 2]}, "d_model": 32, "n_head": 4, "n_kv_head": {"choices": [1, 2]},
    "ffn_mult": 2.0, "attention": "softmax", "sharing": "none", "tie_embeddings": True,
    "max_seq_len": 64}}


def from_parent(**changes: Any) -> Callable[[Path], None]:
    architecture = {**FROM_PARENT["architecture"], **changes.pop("architecture", {})}
    return space(**{**FROM_PARENT, "architecture": architecture, **changes})


@dataclass(frozen=True)
class Cli:
    """``nas ARGS`` run in a fresh folder after ``setup`` wrote its files there."""

    args: list[str]
    setup: list[Callable[[Path], None]] = field(default_factory=list)


SEARCH = ["search", str(DATA / "e2e.yaml"), "--profiles", str(PROFILE)]

CLI: dict[str, Cli] = {
    # search spaces
    "space-unknown-key": Cli(["search", "bad.yaml"], [space(architecture__n_layers=3)]),
    "space-wrong-type": Cli(["search", "bad.yaml"], [space(trials="many")]),
    "space-wrong-value-type": Cli(
        ["search", "bad.yaml"], [space(architecture__d_model={"choices": [16, "wide"]})]
    ),
    "space-empty-choices": Cli(["search", "bad.yaml"], [space(architecture__d_model={"choices": []})]),
    "space-bare-list": Cli(["search", "bad.yaml"], [space(architecture__d_model=[16, 32])]),
    "space-bad-range": Cli(["search", "bad.yaml"], [space(architecture__n_layer={"range": [3]})]),
    "space-fidelity-eta": Cli(["search", "bad.yaml"], [space(fidelity={"min_tokens": 1024, "eta": 1})]),
    "space-fidelity-min-tokens": Cli(["search", "bad.yaml"],
                                     [space(fidelity={"min_tokens": 4096, "eta": 2})]),
    "space-fidelity-below-batch": Cli(["search", "bad.yaml"],
                                      [space(fidelity={"min_tokens": 100, "eta": 2})]),
    "space-budget-schedule": Cli(["search", "bad.yaml"], [space(budget__schedule="linear")]),
    "space-budget-cooldown": Cli(["search", "bad.yaml"],
                                 [space(budget__schedule="wsd", budget__cooldown_frac=1.5)]),
    "resume-no-fidelity": Cli(
        ["search", "bad.yaml", "--name", "taken", "--profiles", str(PROFILE), "--no-fidelity"],
        [fidelity_search({**RUNGS, "rung_tokens": [1024, 2048, 4096]})]),
    "resume-with-fidelity": Cli(["search", "bad.yaml", "--name", "taken", "--profiles", str(PROFILE)],
                                [fidelity_search(None)]),
    "space-unknown-metric": Cli(["search", "bad.yaml"], [space(objectives={"speed": "min"})]),
    "space-not-yaml": Cli(["search", "bad.yaml"], [text_file("bad.yaml", "objectives: [val_loss\n")]),
    "space-unknown-name": Cli(["search", "nope"]),
    "space-missing-file": Cli(["search", "missing.yaml"]),
    "constraints-unmeetable": Cli(["search", "bad.yaml"], [space(constraints=["params <= 10"])]),
    "constraints-unmeetable-together": Cli(
        ["search", "bad.yaml"], [space(constraints=["params <= 5e3", "decode_mflops >= 0.2"])]
    ),
    "constraint-strict-operator": Cli(["search", "bad.yaml"], [space(constraints=["params < 2e5"])]),
    # parent models
    "parent-missing": Cli(["search", "bad.yaml"], [from_parent(parent="nowhere")]),
    "parent-not-a-checkpoint": Cli(["search", "bad.yaml"], [from_parent(), text_file("parent/README", "x")]),
    "parent-no-weights": Cli(["search", "bad.yaml"], [from_parent(), parent(files=("config", "tokenizer"))]),
    "parent-no-tokenizer": Cli(["search", "bad.yaml"], [from_parent(), parent(files=("config", "weights"))]),
    "parent-model-type": Cli(["search", "bad.yaml"], [from_parent(), parent(model_type="gpt2")]),
    "parent-rope-scaling": Cli(["search", "bad.yaml"], [from_parent(), parent(
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0})]),
    "parent-bias": Cli(["search", "bad.yaml"], [from_parent(), parent(attention_bias=True)]),
    "parent-head-dim": Cli(["search", "bad.yaml"], [from_parent(), parent(head_dim=16)]),
    "parent-beyond-depth": Cli(["search", "bad.yaml"], [
        from_parent(architecture={"n_layer": {"choices": [1, 3]}}), parent()]),
    "parent-beyond-head-dim": Cli(["search", "bad.yaml"], [
        from_parent(architecture={"n_head": {"choices": [2, 4]}}), parent()]),
    "parent-tokenizer-conflict": Cli(["search", "bad.yaml"], [from_parent(data__tokenizer="byte"), parent()]),
    "parent-corpus-unencodable": Cli(["search", "bad.yaml", "--profiles", str(PROFILE)],
                                     [from_parent(), parent()]),
    # hardware profiles
    "profile-unknown": Cli([*SEARCH[:2], "--profiles", "nope"]),
    "profile-not-measured": Cli(["search", "space.yaml", "--profiles", "cpu-1t"], [space("space.yaml")]),
    "profile-unknown-key": Cli([*SEARCH[:2], "--profiles", "fast.yaml"], [profile("fast", threads=2)]),
    "profile-bad-value": Cli([*SEARCH[:2], "--profiles", "fast.yaml"], [profile("fast", precision="fp8")]),
    "provider-unavailable": Cli(
        [*SEARCH[:2], "--profiles", f"{PROFILE},gpu.yaml"], [profile("gpu", provider="CUDAExecutionProvider")]
    ),
    "profile-bound-without-cluster": Cli([*SEARCH[:2], "--profiles", f"{PROFILE},{EDGE_PROFILE}"]),
    "profile-bad-workload": Cli([*SEARCH[:2], "--profiles", "fast.yaml"],
                                [profile("fast", decode_contexts=[48, 0])]),
    "space-metric-not-in-profile": Cli(
        ["search", "bad.yaml", "--profiles", str(PROFILE)],
        [space(objectives={"val_loss": "min", "latency:e2e-1t:decode_ms@48": "min"})]),
    "profile-workload-longer-than-max-seq-len": Cli(
        ["search", "bad.yaml", "--profiles", f"{PROFILE},long.yaml"],
        [space(), profile("long", decode_contexts=[96], new_tokens=16)]),
    "profile-longer-than-max-seq-len": Cli(
        ["search", "bad.yaml", "--profiles", f"{PROFILE},cpu-1t"], [space()]
    ),
    "space-profile-longer-than-max-seq-len": Cli(
        ["search", "bad.yaml"],
        [
            space(
                profiles=["cpu-1t"],
                objectives={"val_loss": "min", "latency:cpu-1t:decode_ms": "min"},
                architecture__max_seq_len={"choices": [32, 256]},
            )
        ],
    ),
    # corpora
    "corpus-missing": Cli([*SEARCH, "--data", "missing.txt"]),
    "corpus-glob-empty": Cli([*SEARCH, "--data", "texts/*.txt"]),
    "corpus-directory": Cli([*SEARCH, "--data", "texts"], [text_file("texts/README", "x")]),
    "corpus-empty": Cli([*SEARCH, "--data", "empty.txt"], [text_file("empty.txt", "")]),
    "corpus-not-text": Cli(
        [*SEARCH, "--data", "blob.bin"], [text_file("blob.bin", bytes(range(128, 256)) * 64)]
    ),
    "corpus-too-small": Cli([*SEARCH, "--data", "small.txt"], [text_file("small.txt", "hello world\n" * 20)]),
    "corpus-nul-bytes": Cli(
        [*SEARCH, "--data", "a.out"],
        [text_file("a.out", b"\x7fELF\x02\x01\x01" + bytes(4096) + b".text\0.data\0" + bytes(2048))],
    ),
    "corpus-undecodable": Cli(
        ["search", "bad.yaml", "--profiles", str(PROFILE)],
        [
            space(data__corpus=["latin1.txt"]),
            text_file(
                "latin1.txt",
                "caf\u00e9 na\u00efve r\u00e9sum\u00e9 d\u00e9j\u00e0 vu\n".encode("latin-1") * 500,
            ),
        ],
    ),
    "corpus-control-characters": Cli(
        ["evaluate", "--arch", "arch.json", "--data", "term.log"],
        [text_file("arch.json", "{}"), text_file("term.log", "\x1b[1m\x07ok\x08\x1b[0m\n" * 500)],
    ),
    # databases
    "db-not-a-url": Cli([*SEARCH, "--db", "nas.sqlite"]),
    "db-unknown-dialect": Cli([*SEARCH, "--db", "mongodb://localhost/nas"]),
    "db-driver-missing": Cli([*SEARCH, "--db", "mysql://nas@localhost/nas"]),
    "db-sqlite-no-directory": Cli([*SEARCH, "--db", "sqlite:///no/such/dir/nas.db"]),
    "db-postgres-unreachable": Cli([*SEARCH, "--db", "postgresql+psycopg://nas:secret@127.0.0.1:{port}/nas"]),
    # Ray
    "ray-unreachable": Cli([*SEARCH, "--ray-address", "127.0.0.1:{port}"]),
    "ray-address-malformed": Cli([*SEARCH, "--ray-address", "head-node"]),
    # a search name already taken
    "name-taken-other-space": Cli([*SEARCH, "--name", "taken"], [existing_search(space_hash="0" * 16)]),
    "name-taken-other-profiles": Cli(
        [*SEARCH, "--name", "taken"], [existing_search(profiles=[{"name": "cpu-1t"}])]
    ),
    "name-taken-other-data": Cli(
        [*SEARCH, "--name", "taken", "--data", "corpus.txt"],
        [existing_search(), text_file("corpus.txt", "some text to train on. " * 2000)],
    ),
    # reading searches
    "show-unknown-search": Cli(["show", "nope"], [existing_search("e2e")]),
    "pareto-bad-format": Cli(["pareto", "e2e", "--format", "xml"]),
    "usage-trials-zero": Cli([*SEARCH, "--trials", "0"]),
    # names and files the command line refuses
    "search-name-invalid": Cli([*SEARCH, "--name", "../evil"]),
    "search-name-empty": Cli([*SEARCH, "--name", ""]),
    "space-name-invalid": Cli(["search", "bad.yaml", "--profiles", str(PROFILE)], [space(name="a b")]),
    "db-sqlite-missing": Cli(["ls", "--db", "sqlite:///typo.db"]),
    "report-output-missing-directory": Cli(
        ["report", "e2e", "-o", "missing/dir/r.html"], [existing_search("e2e")]
    ),
    "report-output-is-directory": Cli(
        ["report", "e2e", "-o", "out"], [existing_search("e2e"), text_file("out/keep", "")]
    ),
    "rm-running": Cli(["rm", "busy", "--yes"], [running_search("busy")]),
    "evaluate-arch-missing": Cli(["evaluate", "--arch", "arch.json"]),
    "evaluate-arch-invalid": Cli(
        ["evaluate", "--arch", "arch.json"],
        [text_file("arch.json", json.dumps({"n_layer": 2, "d_model": 48, "n_head": 5}))],
    ),
    "evaluate-arch-bad-attention": Cli(
        ["evaluate", "--arch", "arch.json"],
        [
            text_file(
                "arch.json", json.dumps({"n_layer": 1, "d_model": 32, "n_head": 2, "attention": "bogus"})
            )
        ],
    ),
    "evaluate-arch-shorter-than-profile": Cli(
        ["evaluate", "--arch", "arch.json", "--profile", "cpu-1t"],
        [text_file("arch.json", json.dumps({"max_seq_len": 64}))],
    ),
}


@dataclass(frozen=True)
class Api:
    """``METHOD PATH`` with ``body`` (JSON, or raw text) against the web service."""

    method: str
    path: str
    body: Any = None
    setup: list[Callable[[Path], None]] = field(default_factory=list)


API: dict[str, Api] = {
    "api-body-not-json": Api("POST", "/api/searches", "{name: x}"),
    "api-missing-name": Api("POST", "/api/searches", {"space": "tiny"}),
    "api-bad-name": Api("POST", "/api/searches", {"name": "../x", "space": "tiny"}),
    "api-two-spaces": Api("POST", "/api/searches", {"name": "x", "space": "tiny", "space_yaml": "name: x"}),
    "api-unknown-field": Api("POST", "/api/searches", {"name": "x", "space": "tiny", "workers": 4}),
    "api-trials-zero": Api("POST", "/api/searches", {"name": "x", "space": "tiny", "trials": 0}),
    "api-unknown-space": Api("POST", "/api/searches", {"name": "x", "space": "huge"}),
    "api-bad-space-yaml": Api("POST", "/api/searches", {"name": "x", "space_yaml": api_space_yaml(
        architecture={**BASE_SPACE["architecture"], "d_model": {"choices": []}})}),
    "api-space-yaml-reads-files": Api("POST", "/api/searches", {"name": "x", "space_yaml": api_space_yaml(
        data={"corpus": ["/etc/passwd"], "tokenizer": "byte"})}),
    "api-space-yaml-parent": Api("POST", "/api/searches", {"name": "x", "space_yaml": api_space_yaml(
        parent="/srv/models/llama")}),
    "api-unknown-profile": Api("POST", "/api/searches", {"name": "x", "space": "tiny", "profiles": ["tpu"]}),
    "api-name-taken-other-space": Api(
        "POST", "/api/searches", {"name": "taken", "space": "tiny"}, [existing_search(space_hash="0" * 16)]
    ),
    "api-unknown-search": Api("GET", "/api/searches/nope", setup=[existing_search("e2e")]),
    "api-unknown-candidate": Api("GET", "/api/candidates/999"),
}


def run_cli(
    case: Cli, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("NAS_DB", raising=False)
    for setup in case.setup:
        setup(cwd)
    args = [a.format(port=free_port()) for a in case.args]
    if "--db" not in args and args[0] != "evaluate":
        args += ["--db", "sqlite:///nas.db"]
    if args[0] == "search":
        args.append("--no-progress")
    monkeypatch.setattr(sys, "argv", ["nas", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        nas.cli.main()
    return int(exited.value.code or 0), cli_error(capsys.readouterr().err)


@pytest.mark.parametrize("row_id", sorted(CLI))
def test_cli(
    row_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    status, message = run_cli(CLI[row_id], tmp_path, monkeypatch, capsys)
    assert_documented(row_id, status, message)


@pytest.mark.parametrize("row_id", sorted(API))
def test_api(row_id: str, tmp_path: Path) -> None:
    case = API[row_id]
    for setup in case.setup:
        setup(tmp_path)
    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        client = TestClient(create_app(store, workdir=tmp_path / "serve"))
        if isinstance(case.body, str):
            response = client.request(
                case.method, case.path, content=case.body, headers={"content-type": "application/json"}
            )
        else:
            response = client.request(case.method, case.path, json=case.body)
    assert_documented(row_id, response.status_code, response.text)
    assert not (tmp_path / "serve" / "logs").exists() or not any((tmp_path / "serve" / "logs").iterdir())


@pytest.mark.slow
def test_gpus_per_trial_without_gpus(tmp_path: Path) -> None:
    """Ray must be started to know its GPUs: the real CLI in a child process."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas",
            *SEARCH,
            "--gpus-per-trial",
            "1",
            "--no-progress",
            "--db",
            f"sqlite:///{tmp_path / 'nas.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert_documented("gpus-unavailable", result.returncode, cli_error(result.stderr))
    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        assert store.list_searches() == []  # refused before anything was written


def test_the_real_entry_point_prints_the_same_error(tmp_path: Path) -> None:
    """`nas` as a process: exit status 2, ``error: <message>`` on stderr, no traceback."""
    db = f"sqlite:///{tmp_path / 'x.db'}"
    Store(db).close()  # an empty database: reading commands never create one
    result = subprocess.run(
        [sys.executable, "-m", "nas", "show", "nope", "--db", db], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert_documented("show-unknown-search-empty", result.returncode, cli_error(result.stderr))


def test_every_row_is_checked_and_every_check_is_a_row() -> None:
    here = Path(__file__).name
    elsewhere = {
        row.id
        for row in ROWS.values()
        if not row.test.startswith(f"{here}::test_cli[") and not row.test.startswith(f"{here}::test_api[")
    }
    assert set(CLI) | set(API) | elsewhere == set(ROWS)
    for row in ROWS.values():
        file, _, test = row.test.partition("::")
        source = (Path(__file__).parent / file).read_text()
        name = test.split("[")[0]
        assert f"def {name}(" in source, f"{row.id}: {row.test} does not exist"
        if "[" in test:
            assert test == f"{name}[{row.id}]", f"{row.id}: test column says {row.test}"
        else:
            assert f'"{row.id}"' in source, f"{row.id}: {row.test} does not check this row"
