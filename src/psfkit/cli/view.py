"""``psfkit view``: the Dynamic PSF window in the browser (a local web server)."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from pathlib import Path

import typer

from psfkit.cli._app import app, fail


def _check_host(host: str) -> str:
    """The ``--host`` value as an address to bind (brackets removed), or a one-line error."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    if not h or re.fullmatch(r"[0-9.]+", h) or ":" in h:
        raise fail(f"--host {host}: not a valid IP address")
    try:
        socket.getaddrinfo(h, None)
    except (socket.gaierror, UnicodeError):
        raise fail(f"--host {host}: not a valid address (no such host name)") from None
    return h


def _bind_error(host: str, port: int) -> OSError | None:
    """None when ``host``:``port`` can be bound now, else the error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as exc:
            return exc
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    """0.0.0.0 or :: (every interface)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _machine_names() -> list[str]:
    """Host names and addresses of this machine (the names other machines use for it), best effort."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return sorted(n for n in names if n)


@app.command("view")
def view_command(
    image: Path | None = typer.Argument(None, help="Image to open first (its folder is the default root)."),
    root: Path | None = typer.Option(
        None, "--root",
        help="Folder the page may read images from (default: the image's folder, or the current folder)."),
    export_dir: Path | None = typer.Option(
        None, "--export-dir",
        help="Folder the export buttons write into (default: psfkit-exports inside the root, made at the first "
             "export). Existing files are never overwritten."),
    port: int = typer.Option(8765, "--port",
                             help="Port (0: any free port; a busy default port falls back to a free one)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to bind; keep the loopback unless you mean to share the page."),
    allow_host: list[str] | None = typer.Option(
        None, "--allow-host",
        help="A host name the page may be opened by, besides localhost, 127.0.0.1, [::1] and --host (repeatable)."),
    max_body: float = typer.Option(32.0, "--max-body",
                                   help="Largest request body in MB (a star list sent for export or averaging)."),
    detect_queue: int = typer.Option(
        4, "--detect-queue", help="Detections that may wait while one runs; more are refused (503, retry later)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser window."),
) -> None:
    """Open the Dynamic PSF window: image, star detection, fits, averages and exports in the browser.

    The server answers only requests addressed to this machine's loopback names (or --host and
    --allow-host), and writes only new files in the export folder; see docs/security.md.
    """
    try:
        import uvicorn  # noqa: F401

        from psfkit.web import create_app
    except ImportError as exc:
        raise fail(f"the web viewer needs the 'web' extra (pip install 'psfkit[web]'): {exc}") from None

    if image is not None and not image.is_file():
        raise fail(f"{image}: no such file")
    if image is not None:
        from psfkit.io.image import load_image

        load_image(image)  # an unreadable image is a one-line error now, not a page that cannot open it
    default_root = image.parent if image is not None else Path.cwd()
    root_dir = (root if root is not None else default_root).expanduser().resolve()
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
    if not 0.001 <= max_body <= 4096:
        raise fail(f"--max-body must be 0.001..4096 MB, got {max_body:g}")
    if not 0 <= detect_queue <= 1000:
        raise fail(f"--detect-queue must be 0..1000, got {detect_queue}")
    bind = _check_host(host)
    problem = _bind_error(bind, port)
    if problem is not None:
        if getattr(problem, "errno", None) != errno.EADDRINUSE:
            reason = getattr(problem, "strerror", None) or problem
            raise fail(f"--host {host}: cannot listen on this address ({reason}); "
                       "give one of this machine's addresses")
        if port == 8765:
            port = 0
        else:
            raise fail(f"port {port} on {host} is in use; choose another with --port (0: any free port)")
    extra_hosts = [bind] + list(allow_host or [])
    exports_shown = export_dir.expanduser().resolve() if export_dir is not None else root_dir / "psfkit-exports"
    if not _is_loopback(bind):
        if _is_unspecified(bind):  # every interface: other machines open the page by this machine's names
            extra_hosts += _machine_names()
        reach = f"port {port}" if port else "its port"
        typer.echo(f"psfkit: warning: serving on {host}, not only this machine: whoever reaches {reach} "
                   f"can list and view the images under {root_dir}, run detections and write exports "
                   f"into {exports_shown}", err=True)

    web_app = create_app(root_dir, export_dir=export_dir, image=rel, allowed_hosts=extra_hosts,
                         max_body=int(max_body * 2 ** 20), detect_queue=detect_queue)
    import uvicorn

    config = uvicorn.Config(web_app, host=bind, port=port, log_level="warning", lifespan="off")
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
        shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(str(bound[0]))  # a wildcard bind: this machine's own
        shown = shown or (f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0])
        url = f"http://{shown}:{bound[1]}/"
        if rel:
            from urllib.parse import quote

            url += f"#image={quote(rel)}"
        typer.echo(f"psfkit view: {url}  (root {root_dir}; exports to {exports_shown}; Ctrl+C to stop)")
        if not no_browser:
            import webbrowser

            webbrowser.open(url)
        from psfkit.web import warm_up

        warm_up()  # the compiled kernels, before the first "Detect stars"

    threading.Thread(target=announce, daemon=True).start()
    server.run()
