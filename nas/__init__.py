"""Hardware-aware neural architecture search for small language models."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from nas.architecture import Architecture

if TYPE_CHECKING:
    from nas.model import NasLM

__all__ = ["Architecture", "__version__", "load"]


def _version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    try:
        return version("nas")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()


def load(directory: str | os.PathLike[str]) -> NasLM:
    """The PyTorch model of an exported directory or of a Hugging Face Llama/Mistral checkpoint
    (`nas.checkpoint.load`); torch is imported on the first call, not by ``import nas``."""
    from nas.checkpoint import load as _load

    return _load(directory)
