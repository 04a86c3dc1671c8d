"""The "New search" page: a form that launches through the same `Launcher` as the API, with
errors beside their fields, the server's token when it has one, and a redirect on success."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from harness import assert_documented
from nas.service import create_app
from nas.service.launch_page import yaml_key_line
from nas.store import Store

from .conftest import TOKEN, app_client

ROOT = Path(__file__).resolve().parents[2]
E2E = (ROOT / "tests" / "data" / "e2e.yaml").read_text()
# The e2e space on a shipped profile: what a user would paste.
PASTED = E2E.replace("e2e-1t", "cpu-1t").replace("max_seq_len: 64", "max_seq_len: 256")


def field_error(page: str, field: str) -> str | None:
    """The text of the error shown beside ``field``, as the user reads it."""
    match = re.search(rf'<p class="field-error" id="error-{field}"[^>]*>(.*?)</p>', page, re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))) if match else None


def post(client: TestClient, files=None, **fields) -> object:
    data = {"name": "", "space": "", "space_yaml": "", "trials": "", **fields}
    return client.post("/new", data=data, files=files, follow_redirects=False)


def test_the_form_lists_shipped_spaces_and_profiles(writer):
    r = writer.get("/new")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for space in ("tiny", "slm"):
        assert f'<option value="{space}"' in page
    assert '<option value="tiny" selected>' in page  # the default search
    for profile in ("cpu-1t", "cpu-1t-int8", "cpu-2t"):
        assert f'name="profiles" value="{profile}"' in page
    for element in ('name="name"', 'name="space_yaml"', 'type="file" id="space_file"',
                    'name="trials"', 'enctype="multipart/form-data"', 'action="/new"'):
        assert element in page
    assert 'name="token"' not in page  # this server has no token
    assert '<a href="/new">New search</a>' in page and '<a href="/compare">Compare</a>' in page
    assert "https://" not in page and "http://" not in page


def test_start_from_a_shipped_spaces_yaml(writer):
    page = writer.get("/new?yaml_from=tiny").text
    text = html.unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.DOTALL).group(1))
    assert yaml.safe_load(text)["name"] == "tiny"
    assert '<option value="" selected>' in page  # "my own YAML"


def test_a_shipped_space_launches_like_the_api(writer, spawn):
    r = post(writer, name="tiny-a", space="tiny", trials="3", profiles=["cpu-1t", "cpu-2t"])
    assert r.status_code == 303 and r.headers["location"] == "/searches/tiny-a"
    api = writer.post("/api/searches", json={"name": "tiny-b", "space": "tiny", "trials": 3,
                                             "profiles": ["cpu-1t", "cpu-2t"]})
    assert api.status_code == 202
    (form_argv, kwargs), (api_argv, _) = spawn.calls
    assert form_argv == [a.replace("tiny-b", "tiny-a") for a in api_argv]  # one code path
    assert form_argv[3:] == ["search", "tiny", "--name", "tiny-a", "--profiles", "cpu-1t,cpu-2t",
                             "--no-progress", "--trials", "3"]
    assert kwargs["shell"] is False
    # The redirect lands on the live page: "starting" until the driver creates the search.
    page = writer.get(r.headers["location"], headers={"Accept": "text/html"})
    assert page.status_code == 200 and "starting" in page.text


def test_pasted_yaml_is_written_for_the_search_process(writer, spawn, workdir):
    r = post(writer, name="mine", space_yaml=PASTED, trials="1")
    assert r.status_code == 303, field_error(r.text, "space_yaml")
    argv = spawn.calls[0][0]
    path = Path(argv[4])
    assert path.parent == workdir / "spaces" and path.read_text() == PASTED
    assert argv[argv.index("--profiles") + 1] == "cpu-1t"  # no box ticked: the space's own


def test_an_uploaded_file_is_used(writer, spawn, workdir):
    r = post(writer, name="uploaded", files={"space_file": ("e2e.yaml", PASTED.encode(), "text/yaml")})
    assert r.status_code == 303
    assert Path(spawn.calls[0][0][4]).read_text() == PASTED


def test_bad_yaml_is_shown_beside_the_box_and_kept(writer, spawn, workdir):
    r = post(writer, name="x", space_yaml="objectives: [val_loss")
    assert r.status_code == 422
    message = field_error(r.text, "space_yaml")
    assert message.startswith("not valid YAML: while parsing a flow sequence")
    assert "objectives: [val_loss</textarea>" in r.text  # the text is kept to fix it
    assert field_error(r.text, "name") is None
    assert spawn.calls == []
    assert not (workdir / "spaces").exists() or not any((workdir / "spaces").iterdir())


def test_an_unknown_key_is_named_with_its_line(writer, spawn):
    text = PASTED.replace("  n_layer: {range: [1, 3]}", "  n_layers: {range: [1, 3]}")
    r = post(writer, name="x", space_yaml=text)
    assert r.status_code == 422
    line = text.splitlines().index("  n_layers: {range: [1, 3]}") + 1
    assert field_error(r.text, "space_yaml") == (
        f"architecture.n_layers (line {line}): unknown key 'architecture.n_layers'={{'range': [1, 3]}} "
        "(known: n_layer, d_model, n_head, n_kv_head, ffn_mult, attention, window, sharing, "
        "tie_embeddings, vocab_size, max_seq_len)")
    assert '<code id="error-key">architecture.n_layers</code>' in r.text
    assert spawn.calls == []


def test_the_yamls_own_profiles_are_checked_beside_the_box(writer, spawn):
    r = post(writer, name="x", space_yaml=E2E)  # e2e-1t is not shipped
    assert r.status_code == 422
    assert field_error(r.text, "space_yaml") == (
        "profiles (line 6): space_yaml.profiles: 'e2e-1t' is not a shipped hardware profile "
        "(known: cpu-1t, cpu-1t-batch8, cpu-1t-int8, cpu-1t-long, cpu-2t)")


def test_profiles_that_miss_an_objective(writer, spawn):
    r = post(writer, name="x", space="tiny", profiles=["cpu-2t"])
    assert r.status_code == 422
    assert "needs profile 'cpu-1t'" in field_error(r.text, "profiles")
    assert 'value="cpu-2t" checked' in r.text  # the ticks are kept


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"name": "../evil", "space": "tiny"}, "name",
     "name='../evil' must be 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit"),
    ({"name": "", "space": "tiny"}, "name",
     "name='' must be 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit"),
    ({"name": "x", "space": "tiny", "trials": "0"}, "trials", "trials=0 must be between 1 and 10000"),
    ({"name": "x", "space": "tiny", "profiles": ["tpu"]}, "profiles",
     "profiles: 'tpu' is not a shipped hardware profile (known: cpu-1t, cpu-1t-batch8, cpu-1t-int8, "
     "cpu-1t-long, cpu-2t)"),
    ({"name": "x", "space": "huge"}, "space",
     "space='huge' is not a shipped search space (known: slm, tiny)"),
])
def test_launcher_errors_go_beside_their_field(writer, spawn, fields, field, message):
    r = post(writer, **fields)
    assert r.status_code == 422 and field_error(r.text, field) == message
    assert 'id="form-errors"' in r.text and spawn.calls == []


def test_a_running_search_name_is_a_conflict(writer, spawn):
    r = post(writer, name="live", space="tiny")
    assert r.status_code == 409
    assert field_error(r.text, "name").startswith("search 'live' is running")


def test_token_missing_wrong_and_right(store, spawn, workdir):
    guarded = app_client(store, spawn, workdir, token=TOKEN)
    page = guarded.get("/new").text
    assert 'name="token"' in page
    assert post(guarded, name="x", space="tiny", token="").status_code == 401
    wrong = post(guarded, name="x", space="tiny", token="nope")
    assert wrong.status_code == 401
    assert field_error(wrong.text, "token") == \
        "invalid token: it is not the token this server was started with"
    assert "nope" not in wrong.text  # the token is never echoed
    assert 'value="x"' in wrong.text  # the rest of the form is
    assert spawn.calls == []
    assert post(guarded, name="x", space="tiny", token=TOKEN).status_code == 303
    # The API's headers work too; the API itself still needs the header.
    r = guarded.post("/new", data={"name": "y", "space": "tiny"},
                     headers={"Authorization": f"Bearer {TOKEN}"}, follow_redirects=False)
    assert r.status_code == 303
    assert guarded.post("/api/searches", json={"name": "z", "space": "tiny"}).status_code == 401
    assert len(spawn.calls) == 2


def test_a_cross_site_form_post_is_refused(writer, spawn):
    r = writer.post("/new", data={"name": "x", "space": "tiny"},
                    headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403 and spawn.calls == []


def test_a_memory_database_cannot_launch():
    with Store("sqlite:///:memory:") as store:
        client = TestClient(create_app(store))
        assert "database is in memory" in client.get("/new").text
        r = post(client, name="x", space="tiny")
        assert r.status_code == 409 and "database is in memory" in r.text


def test_yaml_key_line():
    text = "a: 1\nb:\n  c: [1, 2]\n  d:\n    - x\n    - y\n"
    assert yaml_key_line(text, "b.c") == 3
    assert yaml_key_line(text, "b.d[1]") == 6
    assert yaml_key_line(text, "b.nope") == 2  # as deep as it goes
    assert yaml_key_line(text, "nope") is None
    assert yaml_key_line("a: [", "a") is None


# ----- rows of docs/bad-input.md ---------------------------------------------------------------
DOCUMENTED = {
    "page-launch-no-space": ({"name": "x", "space": ""}, None, "space_yaml", None),
    "page-launch-yaml-twice": (
        {"name": "x", "space": "", "space_yaml": PASTED},
        {"space_file": ("e2e.yaml", PASTED.encode(), "text/yaml")},
        "space_yaml",
        None,
    ),
    "page-launch-upload-not-text": (
        {"name": "x", "space": ""},
        {"space_file": ("model.bin", b"name: x\n\xff\xfe\x00", "application/octet-stream")},
        "space_yaml",
        None,
    ),
    "page-launch-trials-not-a-number": (
        {"name": "x", "space": "tiny", "trials": "many"},
        None,
        "trials",
        None,
    ),
    "page-launch-token-missing": ({"name": "x", "space": "tiny"}, None, "token", TOKEN),
    "page-launch-token-wrong": ({"name": "x", "space": "tiny", "token": "guess"}, None, "token", TOKEN),
}


@pytest.mark.parametrize("row_id", sorted(DOCUMENTED))
def test_documented(row_id, store, spawn, workdir):
    fields, files, field, token = DOCUMENTED[row_id]
    client = app_client(store, spawn, workdir, token=token)
    r = post(client, files=files, **fields)
    assert_documented(row_id, r.status_code, field_error(r.text, field) or r.text)
    assert spawn.calls == []
