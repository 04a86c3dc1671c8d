"""Searches from a parent model (issue 15), for real: Ray locally, real training and timing.

- a space's ``parent:`` sets the tokenizer (the parent's file), the vocabulary and the model's
  numeric constants; ``--parent`` does the same for any space;
- a search from a parent stores the parent and, for every candidate, how it was derived; its
  candidates are distilled (``val_kl``) and, at the same tiny budget, far better than the same
  architectures trained from scratch;
- a resume from a parent whose weights changed is refused.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from parents import nas_parent

from harness import DATA, PROFILE
from nas.architecture import Architecture
from nas.data import prepare
from nas.errors import SearchError
from nas.hardware import load_profiles
from nas.model import build_model
from nas.proxy import train
from nas.search import SearchDriver, SearchRequest
from nas.space import load_space
from nas.space.parent import with_parent
from nas.specs import DataSpec, ProxyBudget
from nas.store import Store

PROFILES = tuple(load_profiles([PROFILE]))
PARENT = Architecture(n_layer=2, d_model=64, n_head=4, n_kv_head=2, ffn_mult=2.0, vocab_size=256,
                      max_seq_len=64, rope_theta=50000.0)


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parent `nas` trained itself on the embedded corpus (byte tokens), as `nas export`
    writes it: ~60k tokens, a few seconds, far better than any 4k-token proxy."""
    budget = ProxyBudget(tokens=60_000, batch_size=8, seq_len=32, lr=3e-3, val_tokens=2048)
    model = build_model(PARENT)
    trained = train(PARENT, budget, prepare(DataSpec()), seed=0, threads=1, model=model).model
    directory = tmp_path_factory.mktemp("parent") / "parent"
    nas_parent(directory, trained)
    return directory


def _space(tmp_path: Path, parent: str | None, **architecture: object) -> Path:
    spec = yaml.safe_load((DATA / "e2e.yaml").read_text())
    del spec["data"]["tokenizer"]  # the parent's
    spec["architecture"].update({
        "n_layer": {"choices": [1, 2]}, "d_model": {"choices": [32, 64]}, "n_head": 4,
        "n_kv_head": {"choices": [1, 2]}, "attention": {"choices": ["softmax", "sliding_window"]},
        "sharing": {"choices": ["none", "all"]}, "tie_embeddings": True, **architecture})
    if parent is not None:
        spec["parent"] = parent
    path = tmp_path / "spaces" / "from_parent.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_parent_sets_tokenizer_vocabulary_and_constants(parent_dir: Path, tmp_path: Path) -> None:
    space = load_space(_space(tmp_path, str(parent_dir)))
    assert space.parent is not None and space.parent.path == str(parent_dir.resolve())
    assert space.data.tokenizer == f"file:{parent_dir.resolve() / 'tokenizer.json'}"
    assert space.vocab_size == 256
    arch = space.sample_random(np.random.default_rng(0))
    assert arch.rope_theta == 50000.0 and arch.rms_norm_eps == PARENT.rms_norm_eps
    # --parent on a space without one gives the same space as writing parent: in the YAML.
    plain = load_space(_space(tmp_path, None))
    assert with_parent(plain, parent_dir).hash == space.hash
    assert space.hash != plain.hash


def test_a_relative_parent_is_the_space_files(parent_dir: Path, tmp_path: Path) -> None:
    space_path = _space(tmp_path, None)
    link = space_path.parent / "models"
    link.symlink_to(parent_dir.parent)
    spec = yaml.safe_load(space_path.read_text())
    spec["parent"] = {"path": "models/parent", "depth": "uniform"}
    space_path.write_text(yaml.safe_dump(spec))
    space = load_space(space_path)
    assert space.parent is not None and space.parent.depth == "uniform"
    assert Path(space.parent.path) == (link / "parent").resolve()


@pytest.mark.slow
def test_a_search_from_a_parent_derives_distils_and_stores_how(parent_dir: Path, tmp_path: Path) -> None:
    space = load_space(_space(tmp_path, str(parent_dir)))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    request = SearchRequest(space=space, name="derived", profiles=PROFILES, trials=4, db_url=db, retime=False)
    outcome = SearchDriver(request, Store(db)).run()
    assert outcome.status == "finished" and outcome.n_complete >= 2

    store = Store(db)
    stored = store.find_search("derived")
    assert stored is not None and stored.parent is not None
    fingerprint = stored.parent["fingerprint"]
    assert stored.parent["architecture"] == PARENT.to_dict() and stored.parent["params"] == PARENT.n_params
    records = store.candidates("derived")
    assert len(records) == 4
    data = prepare(space.data)
    for record in records:
        derivation = record.derivation
        assert derivation is not None and derivation["parent"] == fingerprint, record
        assert len(derivation["blocks"]) == record.architecture.n_unique_blocks
        assert derivation["params"] == [PARENT.n_params, record.architecture.n_params]
        if record.state != "complete":
            continue
        assert math.isfinite(record.metrics["val_kl"]) and record.metrics["val_kl"] >= 0
        # The same architecture from scratch, same budget and seed: inheriting and distilling
        # must be far better at 4k tokens (the parent saw 60k).
        scratch = train(record.architecture, space.budget, data, seed=space.seed, threads=1).result
        assert record.metrics["val_loss"] < scratch.val_loss - 0.3, (record.architecture.describe(),
                                                                     record.metrics["val_loss"],
                                                                     scratch.val_loss)


@pytest.mark.slow
def test_a_resume_from_changed_parent_weights_is_refused(parent_dir: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    from nas.checkpoint import load

    model = load(parent_dir)
    with torch.no_grad():
        model.norm.weight.mul_(1.01)
    nas_parent(changed, model)
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    space = load_space(_space(tmp_path, str(changed)))
    first = SearchRequest(space=space, name="moved", profiles=PROFILES, trials=1, db_url=db, retime=False)
    SearchDriver(first, Store(db)).run()
    # Same path (so the same space hash), other weights: the candidates would not be comparable.
    nas_parent(changed, load(parent_dir))
    again = SearchRequest(space=load_space(_space(tmp_path, str(changed))), name="moved",
                          profiles=PROFILES, trials=2, db_url=db, retime=False)
    with pytest.raises(SearchError, match=r"was started from a parent with fingerprint .*other weights"):
        SearchDriver(again, Store(db)).run()
    assert len(Store(db).candidates("moved")) == 1  # nothing lost, nothing added


@pytest.mark.slow
def test_nas_search_parent_then_nas_show_the_derivation(parent_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from harness import search_args

    db = f"sqlite:///{tmp_path / 'nas.db'}"
    space = _space(tmp_path, None)  # the space names no parent: --parent gives it one
    done = subprocess.run(search_args("cli", db, trials=1, space=space, extra=["--parent", str(parent_dir)]),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"parent: {parent_dir}" in done.stdout and "distilled" in done.stdout
    shown = subprocess.run([sys.executable, "-m", "nas", "show", "cli", "--trial", "0", "--db", db],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "Derived from the parent" in shown.stdout and "kv pooling" in shown.stdout
    listed = subprocess.run([sys.executable, "-m", "nas", "show", "cli", "--db", db],
                            capture_output=True, text=True, timeout=120)
    assert f"derived from parent {parent_dir}" in listed.stdout, listed.stdout


def test_the_cached_teacher_at_full_vocabulary_trains_like_the_parent_itself(parent_dir: Path,
                                                                             tmp_path: Path) -> None:
    # The search's default teacher is the parent's top-k logits, computed once by the driver;
    # at k = vocab it is the parent's whole distribution, so a candidate must train the same.
    from nas.evaluate import train_and_export
    from nas.parent import load_parent

    space = load_space(_space(tmp_path, str(parent_dir)))
    data = prepare(space.data)
    arch = space.choose(lambda _field, _parent, spec: (spec.values if hasattr(spec, "values") else spec)[0])
    runs = {}
    for teacher, k in (("worker", 32), ("cache", 256), ("cache", 32)):
        spec = dataclasses.replace(space.parent, teacher=teacher, teacher_top_k=k)
        ref = load_parent(spec, data, space.budget, space.seed)
        assert (ref.teacher_cache is None) == (teacher == "worker")
        assert ref.record()["teacher"] == teacher
        out = train_and_export(arch, space.budget, data, seed=space.seed, threads=1, export=False, parent=ref)
        assert out.ok, out.error
        runs[teacher, k] = out.proxy
    worker, full, top32 = runs["worker", 32], runs["cache", 256], runs["cache", 32]
    assert abs(full.val_loss - worker.val_loss) < 2e-3 and abs(full.val_kl - worker.val_kl) < 2e-3
    # 32 of 256 tokens: a lower bound on the KL, and still a distilled candidate.
    assert top32.val_kl < worker.val_kl and abs(top32.val_loss - worker.val_loss) < 0.1
    assert top32.val_kl != full.val_kl  # each ref got its own teacher, not a cached other one
