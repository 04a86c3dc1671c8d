"""The "New search" page: a plain HTML form that starts a search the way ``POST /api/searches``
does (the same `Launcher.check` and `Launcher.launch`), for people rather than scripts.

It works without JavaScript: the form posts ``multipart/form-data`` (a YAML file may be
uploaded), the server validates everything and either redirects (303) to the new search's
live page or renders the form again with each error beside its field. A `ConfigError`'s
``field`` says where: ``name``, ``space``, ``profiles``, ``trials`` or ``space_yaml[.key]``,
and for the YAML the page names the key and the line it is on.

A browser cannot put the server's token in an ``Authorization`` header of a form post, so
the guard middleware lets this one path through (`nas.service.auth.FORM_PATHS`) and the
route checks the token itself: the form's ``token`` field, or the same headers the API reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from nas.errors import ConfigError
from nas.names import NAME_PATTERN
from nas.service.auth import presented_token, token_matches
from nas.service.launcher import MAX_TRIALS, MAX_YAML_BYTES, Conflict
from nas.service.views import search_url

router = APIRouter(include_in_schema=False)
PATH = "/new"  # not /searches/new: "new" is a valid search name, whose page that would hide
FIELDS = ("name", "space", "space_yaml", "profiles", "trials", "no_fidelity", "token")
YAML_SOURCE = "space_yaml"  # the source the launcher gives YAML text in its messages


@dataclass
class LaunchForm:
    """What the user typed (echoed back on error, never the token) and the errors by field."""

    name: str = ""
    space: str = ""  # a shipped space's name; "" means the YAML below
    space_yaml: str = ""
    file_name: str = ""  # the uploaded file the YAML came from, if any
    profiles: list[str] = field(default_factory=list)
    trials: str = ""
    no_fidelity: bool = False  # every candidate the whole budget, as `nas search --no-fidelity`
    token: str = field(default="", repr=False)  # checked, never rendered back
    errors: dict[str, str] = field(default_factory=dict)
    yaml_key: str | None = None  # the YAML key the YAML's error is about
    yaml_line: int | None = None  # 1-based line of that key in the YAML

    @property
    def uses_yaml(self) -> bool:
        return not self.space


def yaml_key_line(text: str, dotted: str) -> int | None:
    """The 1-based line of ``dotted`` (``architecture.d_model.choices``, ``constraints[0]``)
    in the YAML ``text``: as deep as the path can be followed, None if not even its start."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in re.findall(r"\[(\d+)\]|([^.\[\]]+)", dotted):
        index, key = part
        if isinstance(node, yaml.MappingNode) and key:
            found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def place_error(form: LaunchForm, err: ConfigError) -> None:
    """Put the launcher's error beside the form field it is about."""
    where = err.field or ""
    message = str(err)
    if where == YAML_SOURCE or where.startswith(YAML_SOURCE + "."):
        key = where[len(YAML_SOURCE) + 1:] or None
        while message.startswith(f"{YAML_SOURCE}: "):  # the box is the source: said once
            message = message.removeprefix(f"{YAML_SOURCE}: ")
        form.errors["space_yaml"] = message
        form.yaml_key = key
        form.yaml_line = yaml_key_line(form.space_yaml, key) if key else None
    elif where == "profiles" and form.uses_yaml and not form.profiles:
        # No profile ticked: the YAML's own `profiles:` were used, so the YAML is at fault.
        form.errors["space_yaml"] = message
        form.yaml_key = "profiles"
        form.yaml_line = yaml_key_line(form.space_yaml, "profiles")
    elif where in FIELDS:
        form.errors[where] = message
    else:
        form.errors["space_yaml" if form.uses_yaml else "space"] = message


async def read_form(request: Request) -> LaunchForm:
    """The posted form, with the errors found before the launcher sees it (an unreadable
    upload, no YAML at all, trials that are not a number)."""
    data = await request.form(max_files=1, max_fields=32, max_part_size=2 * MAX_YAML_BYTES)

    def text(key: str) -> str:
        value = data.get(key)
        return value if isinstance(value, str) else ""

    form = LaunchForm(name=text("name").strip(), space=text("space").strip(),
                      trials=text("trials").strip(), space_yaml=text("space_yaml"),
                      no_fidelity=text("no_fidelity") in ("1", "on", "true"),
                      token=text("token").strip(),
                      profiles=[p for p in data.getlist("profiles") if isinstance(p, str)])
    upload = data.get("space_file")
    if isinstance(upload, UploadFile) and upload.filename and not form.space:
        raw = await upload.read(MAX_YAML_BYTES + 1)
        form.file_name = upload.filename
        if len(raw) > MAX_YAML_BYTES:
            form.errors["space_yaml"] = (f"{upload.filename}: longer than {MAX_YAML_BYTES} bytes, "
                                         "the most a search space sent to the server may be")
        elif form.space_yaml.strip():
            form.errors["space_yaml"] = (f"{upload.filename}: give the YAML as a file or pasted "
                                         "into the box, not both")
        else:
            try:
                form.space_yaml = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                form.errors["space_yaml"] = (f"{upload.filename}: not UTF-8 text (byte "
                                             f"{err.start}): a search space is a YAML file")
    if not form.space and not form.space_yaml.strip() and "space_yaml" not in form.errors:
        form.errors["space_yaml"] = ("choose a shipped space, or paste a search space's YAML "
                                     "here or upload its file")
    if form.trials and not re.fullmatch(r"\d+", form.trials):
        form.errors["trials"] = f"trials={form.trials!r} must be a whole number from 1 to {MAX_TRIALS}"
    return form


def token_error(request: Request, given: str) -> str | None:
    """Why this request may not start a search (None when it may): the token, when the server
    has one, from the form's field or the headers the API reads."""
    expected: str | None = request.app.state.token
    if expected is None:
        return None
    given = given or presented_token(request.scope) or ""
    if not given:
        return ("this server needs its token to start a search: the one `nas serve` was given "
                "with --token or $NAS_TOKEN")
    if not token_matches(given, expected):
        return "invalid token: it is not the token this server was started with"
    return None


def shipped_spaces() -> list[dict[str, Any]]:
    """Each shipped space with what the form shows of it (profiles, default trials)."""
    from nas.space import list_spaces, load_space

    spaces = []
    for name in list_spaces():
        space = load_space(name)
        spaces.append({"name": name, "description": space.description, "trials": space.trials,
                       "profiles": list(space.profiles),
                       "objectives": [o.metric for o in space.objectives],
                       "fidelity": space.fidelity.to_dict() if space.fidelity else None})
    return spaces


def shipped_profiles() -> list[dict[str, str]]:
    from nas.hardware import list_profiles, load_profiles

    names = list_profiles()
    return [{"name": p.name, "description": p.description} for p in load_profiles(names)]


def render_form(request: Request, form: LaunchForm, status_code: int = 200,
                banner: str | None = None) -> HTMLResponse:
    from nas.service.pages import render

    launcher = request.app.state.launcher
    if launcher is None and banner is None:
        banner = ("this server's database is in memory: a search process cannot share it; "
                  "serve a database file (nas serve --db sqlite:///nas.db) to launch searches")
    return render(request, "new_search.html", status_code=status_code, form=form,
                  spaces=shipped_spaces(), profiles=shipped_profiles(), banner=banner,
                  name_pattern=NAME_PATTERN, max_trials=MAX_TRIALS, path=PATH)


@router.get(PATH, response_class=HTMLResponse)
def new_search_page(request: Request, space: str = "", yaml_from: str = "") -> HTMLResponse:
    """The empty form; ``?yaml_from=tiny`` puts a shipped space's YAML in the box to edit."""
    from nas.space import list_spaces, load_space

    form = LaunchForm(space=space if space in list_spaces() else "")
    if not form.space and not yaml_from:
        form.space = "tiny" if "tiny" in list_spaces() else next(iter(list_spaces()), "")
    if yaml_from in list_spaces():
        form.space = ""
        form.space_yaml = yaml.safe_dump(load_space(yaml_from).to_dict(), sort_keys=False,
                                         default_flow_style=None, width=100)
    return render_form(request, form)


@router.post(PATH, response_class=HTMLResponse)
async def launch_from_form(request: Request) -> Response:
    """Validate the form and start the search (303 to its page), or show the form again with
    the errors beside their fields: 401 for the token, 409 for a clash, else 422."""
    form = await read_form(request)
    problem = token_error(request, form.token)
    if problem is not None:
        form.errors = {"token": problem}
        return render_form(request, form, 401)
    launcher = request.app.state.launcher
    if launcher is None:
        return render_form(request, form, 409)
    if form.errors:
        return render_form(request, form, 422)
    try:
        argv = launcher.check(name=form.name, space=form.space or None,
                              space_yaml=None if form.space else form.space_yaml,
                              profiles=form.profiles or None,
                              trials=int(form.trials) if form.trials else None,
                              store=request.app.state.store, no_fidelity=form.no_fidelity)
        launcher.launch(form.name, argv)
    except ConfigError as err:
        place_error(form, err)
        return render_form(request, form, 422)
    except Conflict as err:  # the name is taken by a running search or another space
        form.errors["name"] = str(err)
        return render_form(request, form, 409)
    return RedirectResponse(search_url(form.name), status_code=303)
