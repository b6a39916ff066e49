"""``psfkit view``: the Dynamic PSF window in the browser (a local web server)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

import typer

from psfkit.cli._app import app, fail


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@app.command("view")
def view_command(
    image: Optional[Path] = typer.Argument(None, help="Image to open first (its folder is the default root)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder the page may read images from (default: the image's folder, or the current folder)."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir", help="Folder the export buttons write into (default: the root)."),
    port: int = typer.Option(8765, "--port", help="Port (0: any free port; a busy default port falls back to a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; keep the loopback unless you mean to share the page."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser window."),
) -> None:
    """Open the Dynamic PSF window: image, star detection, fits, averages and exports in the browser."""
    try:
        import uvicorn  # noqa: F401

        from psfkit.web import create_app
    except ImportError as exc:
        raise fail(f"the web viewer needs the 'web' extra (pip install 'psfkit[web]'): {exc}")

    if image is not None and not image.is_file():
        raise fail(f"{image}: no such file")
    if image is not None:
        from psfkit.io.image import load_image

        load_image(image)  # an unreadable image is a one-line error now, not a page that cannot open it
    root_dir = (root if root is not None else (image.parent if image is not None else Path.cwd())).expanduser().resolve()
    if not root_dir.is_dir():
        raise fail(f"{root_dir}: the root folder does not exist")
    rel = None
    if image is not None:
        real = image.expanduser().resolve()
        if root_dir not in real.parents:
            raise fail(f"{image}: is not inside the root folder {root_dir}")
        rel = real.relative_to(root_dir).as_posix()
    if export_dir is not None and not export_dir.is_dir():
        raise fail(f"{export_dir}: the export folder does not exist")
    if not 0 <= port <= 65535:
        raise fail(f"--port must be 0..65535, got {port}")
    if port and not _port_free(host, port):
        if port == 8765:
            port = 0
        else:
            raise fail(f"port {port} on {host} is in use; choose another with --port (0: any free port)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"psfkit: warning: serving on {host}: anyone who can reach it can read the images under {root_dir}",
                   err=True)

    web_app = create_app(root_dir, export_dir=export_dir, image=rel)
    import uvicorn

    config = uvicorn.Config(web_app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    # print the address (and open the browser) once the socket is bound
    import threading
    import time

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        url = f"http://{shown}:{bound[1]}/"
        if rel:
            from urllib.parse import quote

            url += f"#image={quote(rel)}"
        typer.echo(f"psfkit view: {url}  (root {root_dir}; exports to {export_dir or root_dir}; Ctrl+C to stop)")
        if not no_browser:
            import webbrowser

            webbrowser.open(url)
        from psfkit.web._server import warm_up

        warm_up()  # the compiled kernels, before the first "Detect stars"

    threading.Thread(target=announce, daemon=True).start()
    server.run()
