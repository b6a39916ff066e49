"""``psfkit view``: the Dynamic PSF window in the browser (FastAPI + a plain JS page).

:func:`create_app` builds the app; :func:`serve_in_thread` runs it on a free
loopback port (for tests, benchmarks and notebooks); :func:`warm_up` loads the compiled
kernels before the first request.
"""

from __future__ import annotations

from psfkit.web._server import serve_in_thread, warm_up
from psfkit.web.app import create_app

__all__ = ["create_app", "serve_in_thread", "warm_up"]
