"""Keep a workbench served on a loopback address to this machine's own pages and clients.

Binding 127.0.0.1 keeps other machines out, not other web sites: a page the user visits can
send requests to 127.0.0.1 (a cross-site upload is a plain form post), or point a name of its
own at 127.0.0.1 (DNS rebinding) and then read the answers too. Requests whose Host names
another machine get a 400 (starlette's TrustedHostMiddleware), and requests a page of another
site sends, whose Origin names it, a 403: another name, or this machine on another port (a
notebook's or a development server's page). Clients that send no Origin (gradio_client, curl)
and the app's own page pass.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse

# the names a browser or client on this machine uses for a server on a loopback address
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")


class LocalOrigins:
    """ASGI middleware: refuse (403) an HTTP request whose Origin is not a local page."""

    def __init__(self, app: Any, hosts: tuple[str, ...] = LOCAL_NAMES) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and not self.same_server(origin, headers.get(b"host", b"")):
                refused = PlainTextResponse("Invalid origin: pages of other sites", 403)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def same_server(self, origin: bytes, host: bytes) -> bool:
        """Return whether a page's ``origin`` is this machine's page of the server the request
        names (``host``): a local name, and the same port. A page that another server on this
        machine serves (a notebook, a development server) is another site to a browser; it
        passed while the name alone was compared."""
        try:
            page = urlsplit(origin.decode("latin-1"))
            served = urlsplit("//" + host.decode("latin-1"))
            page_port = page.port or {"http": 80, "https": 443}.get(page.scheme)
            served_port = served.port or page_port
        except ValueError:  # a port that is no number
            return False
        return page.hostname in self.hosts and page_port == served_port


def local_only(host: str) -> list[Middleware]:
    """Return the middleware that keeps an app served on loopback ``host`` to local callers."""
    hosts = (*LOCAL_NAMES, host)
    allowed = [*hosts, "[::1]"]
    return [
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed),
        Middleware(LocalOrigins, hosts=hosts),
    ]
