"""A search from a parent in its readers (issue 15): the API's ``parent`` and ``derivation``,
the search page's parent line (and the offline report's), the candidate page's "Derived from
the parent" section, `nas show`; and nothing extra for a search without a parent.

The search is written through the store as the driver writes one, with a real
`ParentRef.record` and real `Derivation` dicts; nothing is trained.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from html import unescape

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from nas.architecture import Architecture
from nas.cli import app
from nas.derivation import Derivation
from nas.parent import ParentRef
from nas.report import render_report
from nas.service import create_app
from nas.service.lineage import derivation_rows, derivation_summary, parent_line
from nas.store import Store

from .factories import LATENCY, arch, make_search, result
from .test_pages import HTML

PARENT_ARCH = Architecture(n_layer=4, d_model=64, n_head=4, n_kv_head=2, max_seq_len=256)
PARENT = ParentRef(fingerprint="3f2a9c1b00d4e5f6", directory="/models/my-llama",
                   architecture=PARENT_ARCH, weights=b"", importance={}, depth="uniform").record()
PARENT_LINE = f"derived from parent /models/my-llama ({PARENT_ARCH.n_params:,} params, fingerprint 3f2a9c1b)"


def derivation(child: Architecture, blocks: tuple[tuple[int, ...], ...]) -> dict:
    p = PARENT_ARCH
    return Derivation(
        parent=PARENT["fingerprint"], depth="uniform", blocks=blocks, n_layer=(p.n_layer, child.n_layer),
        d_model=(p.d_model, child.d_model), n_head=(p.n_head, child.n_head),
        n_kv_head=(p.n_kv_head, child.n_kv_head), head_dim=(p.head_dim, child.head_dim),
        ffn=(p.ffn_hidden, child.ffn_hidden), kv_pooling=p.n_kv_head // child.n_kv_head,
        attention=(p.attention, child.attention), tie_embeddings=(p.tie_embeddings, child.tie_embeddings),
        params=(p.n_params, child.n_params)).to_dict()


# trial -> (val_loss, decode ms, architecture, parent layers of each block), as `derive` would
# choose them (uniform: 2 of 4 layers are 0 and 3): trial 0 prunes widths and pools kv heads,
# trial 1 runs one block twice (repeat:2), the mean of parent layers 0 and 3; trial 2 was
# trained from scratch (no derivation, no val_kl).
TRIALS = {
    0: (3.0, 0.10, Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=1, max_seq_len=256),
        ((0,), (3,))),
    1: (2.8, 0.20, Architecture(n_layer=2, d_model=64, n_head=4, n_kv_head=2, sharing="repeat:2",
                                max_seq_len=256), ((0, 3),)),
    2: (2.9, 0.30, arch(2), None),
}


@pytest.fixture(scope="module")
def parent_store(tmp_path_factory) -> Iterator[Store]:
    """'derived' (from PARENT, three candidates) beside 'demo' (no parent)."""
    with Store(f"sqlite:///{tmp_path_factory.mktemp('parent') / 'nas.db'}") as store:
        make_search(store, "demo")
        store.create_search(
            "derived", space={"parent": PARENT["path"]}, space_hash="hash-derived",
            profiles=[{"name": "cpu-1t"}], objectives=[("val_loss", "minimize"), (LATENCY, "minimize")],
            constraints=[], data={"corpus": ["stdlib"]}, budget={"tokens": 2048}, trials=3,
            study_name="nas:derived", parent=PARENT)
        for k, (val_loss, decode, child, blocks) in TRIALS.items():
            done = dataclasses.replace(result(k, val_loss, decode, float(child.n_params)),
                                       architecture=child)
            if blocks is not None:
                done = dataclasses.replace(
                    done, derivation=derivation(child, blocks),
                    metrics={**done.metrics, "val_kl": 0.25 + k},
                    proxy=dataclasses.replace(done.proxy, val_kl=0.25 + k))
            store.start_candidate("derived", k, child)
            store.finish_candidate("derived", k, done)
        store.set_status("derived", "finished")
        yield store


@pytest.fixture(scope="module")
def parent_client(parent_store) -> TestClient:
    return TestClient(create_app(parent_store))


def candidate_id(store: Store, name: str, trial: int) -> int:
    return store.candidate_by_trial(name, trial).id


def text_of(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


# ----- API ---------------------------------------------------------------------------------
def test_the_api_says_the_parent_and_each_derivation(parent_client, parent_store):
    s = parent_client.get("/api/searches/derived").json()
    assert s["parent"] == PARENT and s["parent"]["architecture"] == PARENT_ARCH.to_dict()
    assert parent_client.get("/api/searches/demo").json()["parent"] is None
    for k, (_, _, child, blocks) in TRIALS.items():
        c = parent_client.get(f"/api/candidates/{candidate_id(parent_store, 'derived', k)}").json()
        if blocks is None:
            assert c["derivation"] is None and "val_kl" not in c["metrics"]
        else:
            assert c["derivation"] == derivation(child, blocks)
            assert c["metrics"]["val_kl"] == 0.25 + k and c["proxy"]["val_kl"] == 0.25 + k
    # val_kl is a metric like any other in the candidate list too.
    rows = {r["trial_number"]: r for r in parent_client.get("/api/searches/derived/candidates").json()}
    assert rows[0]["metrics"]["val_kl"] == 0.25 and "val_kl" not in rows[2]["metrics"]


def test_the_openapi_schema_documents_both(parent_client):
    schemas = parent_client.get("/api/openapi.json").json()["components"]["schemas"]
    assert "parent" in schemas["SearchOut"]["properties"]
    assert "derivation" in schemas["CandidateOut"]["properties"]


# ----- pages and report --------------------------------------------------------------------
def test_the_search_page_and_the_report_name_the_parent(parent_client, parent_store):
    page = text_of(parent_client.get("/searches/derived", headers=HTML).text)
    assert PARENT_LINE in page
    assert PARENT_LINE in text_of(render_report(parent_store, "derived"))
    plain_page = parent_client.get("/searches/demo", headers=HTML).text
    for plain in (plain_page, render_report(parent_store, "demo")):
        assert "derived from parent" not in plain and 'id="parent"' not in plain


def test_the_candidate_page_shows_how_it_was_derived(parent_client, parent_store):
    html = parent_client.get(f"/candidates/{candidate_id(parent_store, 'derived', 0)}", headers=HTML).text
    assert 'id="derivation"' in html
    section = text_of(html.split('id="derivation"')[1].split("</table>")[0])
    _, _, child, blocks = TRIALS[0]
    d = derivation(child, blocks)
    expected = [
        "parent fingerprint 3f2a9c1b00d4e5f6", "depth strategy uniform",
        "block 0 parent layer 0", "block 1 parent layer 3", "layers 4 → 2", "d_model 64 → 32",
        "query heads 4 → 2", "kv heads 2 → 1", "head_dim 16 ", f"FFN channels {d['ffn'][0]} → {d['ffn'][1]}",
        f"parameters {PARENT_ARCH.n_params:,} → {child.n_params:,}",
        "kv pooling up to 2 parent kv heads mean-pooled into one",
    ]
    for part in expected:
        assert part in section, (part, section)
    assert Derivation.from_dict(d).describe() in section  # the one-line summary above the table
    assert re.search(r"val_kl\s*</th>\s*<td>0\.25", html)  # with the other metrics
    shared = parent_client.get(f"/candidates/{candidate_id(parent_store, 'derived', 1)}", headers=HTML)
    assert "block 0 mean of parent layers 0, 3" in text_of(shared.text)
    assert "kv pooling none" in text_of(shared.text)
    for scratch in (candidate_id(parent_store, "derived", 2), candidate_id(parent_store, "demo", 0)):
        plain = parent_client.get(f"/candidates/{scratch}", headers=HTML).text
        assert "Derived from the parent" not in plain and 'id="derivation"' not in plain


# ----- nas show ----------------------------------------------------------------------------
def show(parent_store, *args: str) -> str:
    url = parent_store.engine.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(app, ["show", *args, "--db", url], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    return out.stdout


def test_nas_show_names_the_parent_and_a_trial_its_derivation(parent_store):
    assert show(parent_store, "derived").splitlines()[0] == PARENT_LINE
    trial = show(parent_store, "derived", "--trial", "1")
    assert "Derived from the parent" in trial
    assert re.search(r"block 0\s*│\s*mean of parent layers 0, 3", trial)
    assert re.search(r"depth strategy\s*│\s*uniform", trial)
    assert Derivation.from_dict(derivation(*TRIALS[1][2:])).describe() in trial
    assert re.search(r"val_kl\s*│\s*1\.25", trial)
    for plain in (show(parent_store, "demo"), show(parent_store, "demo", "--trial", "0"),
                  show(parent_store, "derived", "--trial", "2")):
        assert "parent" not in plain.lower()


# ----- the words, for dicts the readers did not write ----------------------------------------
def test_a_derivation_of_another_shape_still_reads():
    """Stored by another version of nas: its own summary wins; without one, its keys."""
    own = {"summary": "from 3f2a: layers 0,3", "parent": "3f2a"}
    assert derivation_summary(own) == "from 3f2a: layers 0,3"
    odd = {"parent": "3f2a", "depth": "learned", "blocks": [[2]], "d_model": [64, 32], "gates": [1, 0]}
    assert derivation_summary(odd) == 'parent 3f2a; depth learned; blocks [[2]]; d_model 64 → 32; gates [1,0]'
    assert derivation_rows(odd) == [("parent fingerprint", "3f2a"), ("depth strategy", "learned"),
                                    ("block 0", "parent layer 2"), ("d_model", "64 → 32"),
                                    ("gates", "[1,0]")]
    assert derivation_summary(None) == "" and derivation_rows(None) == [] and parent_line(None) == ""
