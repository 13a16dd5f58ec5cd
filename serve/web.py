"""The web page at /ui, where a clinician tries a served model (serve/ui/).

The page is static (HTML, one script, one style sheet, all served from here: it works
with no internet), and it holds no data: the model list, the model cards and every
prediction come from the API it calls like any client, `/v1/models` and
`/v1/models/NAME/predict`, with the bearer token the user typed into its login form.
So the page's own three files are the only open routes besides the probes, and the
token, the body limit, the input checks and the error messages are the API's: no side
door. Its Content-Security-Policy lets it load nothing from elsewhere and run no inline
script, and its answers are never cached.
"""

from __future__ import annotations

import functools
import html
from importlib import resources

from fastapi.responses import Response

PAGE = "/ui"
ASSETS = {"index.html": "text/html; charset=utf-8", "medray.js": "text/javascript; charset=utf-8",
          "medray.css": "text/css; charset=utf-8"}
OPEN_PATHS = frozenset({PAGE, f"{PAGE}/", *(f"{PAGE}/{name}" for name in ASSETS)})
"""Open without the token: the page's static files, which carry no data."""
HEADERS = {
    # data: images are the Grad-CAM view the API answers with; nothing else is allowed.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("medray.serve") / "ui" / name).read_bytes()


def asset(name: str, root: str = "") -> Response | None:
    """One of the page's files by name, or None for any other name (no path is joined).
    `root`: the application's route prefix (Serve's `root_path`), which the page's links
    and API calls start with; it is the deployment's, never the caller's text."""
    if name not in ASSETS:
        return None
    body = _read(name)
    if name == "index.html":
        body = body.replace(b"{{root}}", html.escape(root.rstrip("/")).encode())
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


def page_url(base: str) -> str:
    return f"{base.rstrip('/')}{PAGE}"
