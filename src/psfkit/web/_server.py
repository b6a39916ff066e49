"""Run the app with uvicorn in a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["serve_in_thread", "RunningServer", "warm_up"]


def warm_up() -> None:
    """Load the library's compiled kernels before the user's first click (best effort).

    A fresh process spends about a second loading numba's cached kernels on its
    first detection; ``psfkit view`` calls this in a background thread at start.
    """
    import numpy as np

    from psfkit.datasets.simulate import simulate_field
    from psfkit.detect.find import find_stars
    from psfkit.psf.fit import fit_star

    try:
        data, truth = simulate_field((96, 96), 3, fwhm=3.0, seed=0, edge=16, min_separation=20)
        data = data.astype(np.float32)
        find_stars(data)
        fit_star(data, float(truth["x"][0]), float(truth["y"][0]), angle=True)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first click pays the loading
        return


class RunningServer:
    """A uvicorn server running in a thread; ``url`` is its address, :meth:`stop` ends it."""

    def __init__(self, server: Any, thread: threading.Thread, url: str) -> None:
        self.server, self.thread, self.url = server, thread, url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> RunningServer:
    """Start ``app`` on ``host``:``port`` (0: a free port) and wait until it accepts requests.

    Examples
    --------
    >>> import urllib.request
    >>> import psfkit
    >>> from psfkit.web import create_app
    >>> with serve_in_thread(create_app(psfkit.sample_image_path().parent)) as server:
    ...     print(urllib.request.urlopen(server.url + "/").status)
    200
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="psfkit-view", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > timeout:
            server.should_exit = True
            raise RuntimeError("the web server did not start")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0]
    bound_host, bound_port = sock.getsockname()[:2]
    return RunningServer(server, thread, f"http://{bound_host}:{bound_port}")
