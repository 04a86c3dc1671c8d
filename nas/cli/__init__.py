"""`nas`: thin Typer commands over the library. Heavy imports happen inside commands,
so `nas --help` and `nas ls` start fast.

Every refusal, ours or a usage error of Typer's, is one line on stderr, ``error: ...``,
exit status 2. ``nas search`` exits 0 when the search finished and 130 when it stopped
(Ctrl-C, SIGTERM, or a stop asked through ``nas serve``), so scripts can tell them apart.
"""

from nas.cli import reading, retiming, searching  # noqa: F401 - importing them registers the commands
from nas.cli.common import EXIT_STOPPED, _front, app, db_url, main
from nas.cli.searching import _resume_line

__all__ = ["EXIT_STOPPED", "_front", "_resume_line", "app", "db_url", "main"]
