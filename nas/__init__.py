"""Hardware-aware neural architecture search for small language models."""

from nas.architecture import Architecture

__all__ = ["Architecture", "load"]
__version__ = "0.1.0"


def load(directory: str):  # noqa: ANN201 - torch is imported lazily
    """Load an exported directory as a PyTorch model (see `nas.export.load`)."""
    from nas.export import load as _load

    return _load(directory)
