"""``ecgtrace serve``: a local web page and JSON API around the pipeline (needs ``pip install 'ecgtrace[serve]'``).

:func:`~ecgtrace.serve.app.create_app` builds the FastAPI app; :class:`~ecgtrace.serve.jobs.JobStore`
does the work without the web framework. Importing this package does not import FastAPI.
"""

from __future__ import annotations

__all__ = ["BackgroundServer", "create_app"]


def __getattr__(name: str):
    # lazy: the jobs module and the command's --help work without the web extra installed
    if name in __all__:
        from ecgtrace.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'ecgtrace.serve' has no attribute {name!r}")
