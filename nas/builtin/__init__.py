"""The search spaces and hardware profiles that ship inside the package.

They are package data (``nas/builtin/search_spaces/*.yaml``, ``nas/builtin/hardware_profiles/*.yaml``)
found through `importlib.resources`, so a normal (non-editable) wheel install has them: looking
for them next to a source checkout, as the code once did, found nothing there. The repository's
top-level ``search_spaces/`` and ``hardware_profiles/`` are symlinks to these directories, so a
checkout has one copy of each file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

Kind = Literal["search_spaces", "hardware_profiles"]


def shipped_dir(kind: Kind) -> Path:
    """The directory of the shipped files of one kind.

    A regular package installed from a wheel or in editable mode lies on disk (pip never runs
    a package from a zip), so the resource is a real directory: callers can glob it and name
    its files in error messages.
    """
    return Path(str(resources.files(__name__).joinpath(kind)))


def shipped_files(kind: Kind) -> dict[str, Path]:
    """Bare name (the file's stem) -> shipped YAML file of one kind."""
    directory = shipped_dir(kind)
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))} if directory.is_dir() else {}


__all__ = ["Kind", "shipped_dir", "shipped_files"]
