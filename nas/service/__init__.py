"""``nas serve``: browse searches in a browser (pages) or a program (JSON API under /api).

`create_app(store, token=None)` builds the FastAPI app; `nas.report.write_report` renders
the same search page into one offline HTML file.
"""

from nas.service.app import create_app

__all__ = ["create_app"]
