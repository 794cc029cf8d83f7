"""The browser client (`inngest-gateway.js`): its files, served beside `/api`, and its tag.

The blueprint serves `/inngest-gateway.js` (a classic script), `/inngest-gateway.mjs` (the
ES module) and `/inngest-gateway.d.ts` (its types) under the same prefix as the API, from the
package's `js/` folder; templates get `inngest_gateway_script()`, the `<script>` tag that
loads the client configured for this app's endpoint and batch limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request, send_from_directory, url_for
from markupsafe import Markup, escape

from . import apidoc
from .poster import current_poster, page_tag
from .state import BLUEPRINT, POST_ENDPOINT, gateway_state

FOLDER = Path(__file__).resolve().parent / "js"
# Explicit types: a module script must be JavaScript, and `.ts` would guess MPEG video.
FILES = {
    "inngest-gateway.js": "text/javascript",
    "inngest-gateway.mjs": "text/javascript",
    "inngest-gateway.d.ts": "application/typescript",
}
ENDPOINT = "script"


def _files(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"ETag": {"schema": {"type": "string"}}},
        "content": {mimetype: {"schema": {"type": "string"}} for mimetype in set(FILES.values())},
    }


@apidoc.documented(
    "get",
    {
        "summary": "The browser client: a classic script (.js), its ES module (.mjs), types",
        "description": "Static files, revalidated by ETag. Trusted origins get CORS headers, "
        "so that their pages can import the module.",
        "responses": {
            "200": _files("The file: JavaScript, or TypeScript for the .d.ts"),
            "304": {"description": "Not modified (If-None-Match)"},
        },
    },
)
def serve(filename: str) -> Response:
    """One of the client's files, revalidated by ETag (so a new release is picked up)."""
    return send_from_directory(FOLDER, filename, mimetype=FILES[filename], max_age=0)


def script_tag(**attributes: str) -> Markup:
    """`<script src=".../inngest-gateway.js" data-endpoint=... data-max-batch=...
    data-poster=... defer>` (see `poster.page_tag`). It changes nothing of the page it is on:
    no cookie, no session, no caching header; what posting needs is made by the first post.

    It carries the page's CSP nonce when the host's CSP made one (`request.csp_nonce`, as
    Flask-Talisman sets it). Extra keyword arguments become attributes (`nonce="..."` for
    another CSP's nonce, say); `_` in a name is written as `-`.
    """
    settings = gateway_state().settings
    values = {
        "src": url_for(f"{BLUEPRINT}.{ENDPOINT}", filename="inngest-gateway.js"),
        "data-endpoint": url_for(POST_ENDPOINT),
        "data-max-batch": str(settings.api_max_batch),
        # Binds what this page queues to its viewer, and an anonymous viewer's event ids.
        "data-poster": page_tag(current_poster()),
    }
    # The page's CSP nonce, where the host's CSP makes one (Flask-Talisman's `csp_nonce`).
    nonce = getattr(request, "csp_nonce", None)
    if isinstance(nonce, str) and nonce:
        values["nonce"] = nonce
    values.update({name.replace("_", "-"): value for name, value in attributes.items()})
    rendered = " ".join(f'{name}="{escape(value)}"' for name, value in values.items())
    return Markup(f"<script {rendered} defer></script>")


def register(bp: Blueprint) -> None:
    """Add the client's routes to the gateway's blueprint."""
    for filename in FILES:
        bp.add_url_rule(
            f"/{filename}", ENDPOINT, serve, methods=["GET"], defaults={"filename": filename}
        )
