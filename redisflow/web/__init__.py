"""The web dashboard: ``redisflow ui``, or mount it in your own ASGI app::

    from redisflow.web import dashboard

    app.mount("/redisflow", dashboard(flow, auth="ops:a-long-password"))

Needs the ``ui`` extra (Starlette, Jinja2, uvicorn): ``pip install starlette jinja2 uvicorn``.
``app.py`` has the routes, ``data.py`` what the pages show (read through ``ops/``),
``security.py`` auth, CSRF and headers, ``render.py`` and ``templates/`` the HTML,
``static/`` the stylesheet and the one small script.
"""

from __future__ import annotations

INSTALL_HINT = "the dashboard needs the ui extra: pip install starlette jinja2 uvicorn"

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"{INSTALL_HINT} ({exc.name} is missing)") from None

from .app import dashboard  # noqa: E402 - after the check that says what to install

__all__ = ["INSTALL_HINT", "dashboard"]
