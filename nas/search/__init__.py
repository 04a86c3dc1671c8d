"""A search: a driver loop over a Ray executor and an Optuna study.

- `nas.search.request`: what a search is asked to do (`SearchRequest`, `resolve_profiles`)
  and what it reports (`Progress`, `SearchOutcome`); plain data, cheap to import.
- `nas.search.executor`: everything Ray (start or join, cluster checks, resource options,
  submit/wait/cancel, the remote task bodies); Ray is imported only when it starts.
- `nas.search.study`: everything Optuna (open with retries, ask, tell, repeats, repair,
  constraint values through the public Trial API).
- `nas.search.driver`: `SearchDriver`, the loop that ties them to the store.

The driver and study load on first use (PEP 562), so `from nas.search import resolve_profiles`
(the CLI and the web API's checks) does not import Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nas.search.executor import check_ray_address
from nas.search.request import TIMING_POLICIES, Progress, SearchOutcome, SearchRequest, resolve_profiles

if TYPE_CHECKING:
    from nas.search.driver import MAX_STATIC_REJECTIONS, SearchDriver
    from nas.search.study import REPEAT_ATTR

_LAZY = {"SearchDriver": "nas.search.driver", "MAX_STATIC_REJECTIONS": "nas.search.driver",
         "REPEAT_ATTR": "nas.search.study"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nas.search' has no attribute {name!r}")


__all__ = ["MAX_STATIC_REJECTIONS", "REPEAT_ATTR", "TIMING_POLICIES", "Progress", "SearchDriver",
           "SearchOutcome", "SearchRequest", "check_ray_address", "resolve_profiles"]
