"""``nas serve``: browse searches in a browser (pages) or a program (JSON API under /api).

`create_app(store, token=None)` builds the FastAPI app; `nas.report.write_report` renders
the same search page into one offline HTML file.

`create_app` is imported on first use, not with the package: the report renders with
`nas.service.templating` and `nas.service.views`, and must not need FastAPI to do so
(tests/test_boundaries.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.service.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from nas.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app"]
