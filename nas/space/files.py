"""Where search spaces are found: a bare name is a shipped space, anything else a path.

Discovery is `spaces_dirs` alone, so how the shipped spaces are located can change without
touching how a file becomes a `SearchSpace` (`nas.space.parse`).
"""

from __future__ import annotations

from pathlib import Path

from nas.errors import ConfigError
from nas.space.model import SearchSpace
from nas.space.parse import parse_yaml_text


def spaces_dirs() -> list[Path]:
    """The shipped spaces, package data found through `importlib.resources` (`nas.builtin`), so a
    wheel install has them too; the repository's ``search_spaces/`` is a symlink to that directory."""
    from nas.builtin import shipped_dir

    return [shipped_dir("search_spaces")]


def list_spaces() -> list[str]:
    """Names of the project's search spaces (``search_spaces/<name>.yaml``)."""
    names = {p.stem for d in spaces_dirs() for p in d.glob("*.yaml")}
    return sorted(names)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A bare name (``tiny``) is ``search_spaces/<name>.yaml`` of the project; anything with a
    path separator or a ``.yaml``/``.yml`` suffix, or an existing file, is read as a path."""
    text_name = str(name_or_path)
    as_path = Path(name_or_path)
    is_path = (isinstance(name_or_path, Path) or "/" in text_name or "\\" in text_name
               or as_path.suffix in (".yaml", ".yml") or as_path.is_file())
    if is_path:
        path = as_path
    else:
        candidates = [d / f"{text_name}.yaml" for d in spaces_dirs()]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise ConfigError(f"space={text_name!r} is not a known search space (known: "
                              f"{', '.join(list_spaces()) or 'none'}) nor a file",
                              field="space", value=text_name)
        path = found[0]
    source = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read search space: {exc.strerror or exc}", source=source,
                          field="space", value=text_name) from None
    return parse_yaml_text(text, source, default_name=path.stem)


def _display(path: Path) -> str:
    """The path as the user would recognise it: relative to the cwd when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
