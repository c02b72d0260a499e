"""``/v1/docs``: the API's browsable description (Swagger UI), with no CDN: its script and styles
are served from the installed ``swagger-ui-bundle`` package.

``<PREFIX>DOCS`` chooses who may read it:

- ``token`` (the default): the page and Swagger UI's files are public (they hold nothing about this
  service); the page asks for an API token and loads ``/v1/openapi.json`` with it, so the API's
  description is behind the same token as every route. The token stays in the page's memory and
  goes with every "Try it out" request.
- ``public``: the page and ``/v1/openapi.json`` need no token (routes still do: "Authorize").
- ``off``: no page; ``/v1/openapi.json`` stays behind the token.
"""

from __future__ import annotations

import html
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from common.web.schemas import API_PREFIX

DocsMode = Literal["token", "public", "off"]
DOCS_PATH = f"{API_PREFIX}/docs"
SCHEMA_PATH = f"{API_PREFIX}/openapi.json"
_STATIC = f"{DOCS_PATH}/static"
_SCRIPT = f"{DOCS_PATH}/init.js"
# the page runs only this service's own scripts; Swagger UI sets inline styles and data: images
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}: API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body data-mode="{mode}" data-schema="{schema}">
<form id="token-form" hidden>
<p><label>API token <input id="token" type="password" autocomplete="off" size="60"></label>
<button type="submit">Show the API</button></p>
<p id="token-error" role="alert"></p>
</form>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{script}"></script>
</body>
</html>
"""

# Loads the schema (with the token the operator types, unless the docs are public) and starts
# Swagger UI on it; every "Try it out" request then carries that token.
_INIT = """"use strict";
(function () {
  const body = document.body;
  function show(spec, token) {
    SwaggerUIBundle({
      spec: spec,
      dom_id: "#swagger-ui",
      deepLinking: true,
      requestInterceptor: function (request) {
        if (token) { request.headers.Authorization = "Bearer " + token; }
        return request;
      },
    });
  }
  if (body.dataset.mode === "public") {
    fetch(body.dataset.schema).then(function (r) { return r.json(); })
      .then(function (spec) { show(spec, null); });
    return;
  }
  const form = document.getElementById("token-form");
  const error = document.getElementById("token-error");
  form.hidden = false;
  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    const response = await fetch(body.dataset.schema, {
      headers: { Authorization: "Bearer " + token },
    });
    if (!response.ok) {
      error.textContent = "the service answered " + response.status + ": " +
        ((await response.json()).detail || "the token is not valid here");
      return;
    }
    form.hidden = true;
    show(await response.json(), token);
  });
})();
"""


def is_open(path: str, mode: DocsMode) -> bool:
    """Whether ``path`` is served without a token under this docs mode (the health check always
    is)."""
    if path == f"{API_PREFIX}/health":
        return True
    if mode == "off":
        return False
    if path in (DOCS_PATH, _SCRIPT) or path.startswith(f"{_STATIC}/"):
        return True
    return mode == "public" and path == SCHEMA_PATH


def install_docs(app: FastAPI, mode: DocsMode) -> None:
    """Serve the page, its script and Swagger UI's files (nothing when ``mode`` is ``off``)."""
    if mode == "off":
        return
    app.mount(_STATIC, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs_page(request: Request) -> HTMLResponse:
        page = _PAGE.format(
            title=html.escape(request.app.title),
            static=_STATIC,
            script=_SCRIPT,
            mode=mode,
            schema=SCHEMA_PATH,
        )
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP})

    @app.get(_SCRIPT, include_in_schema=False)
    async def docs_script() -> Response:
        return Response(_INIT, media_type="text/javascript")
