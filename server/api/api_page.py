"""The interactive API page (`GET /docs`): Swagger UI rendering this server's `/openapi.json`.

Swagger UI's files come from the serve environment (the flask-swagger-ui package ships them), never
from a CDN, so the page works on a box with no internet; the page's own start-up script is
`server/static/api-page.js`.
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from flask import Blueprint, abort, redirect, render_template, send_from_directory, url_for

from .page import CONTENT_SECURITY_POLICY

bp = Blueprint("api_page", __name__)

SWAGGER_UI_PACKAGE = "flask_swagger_ui"
# The files the page loads; anything else in the package's folder is not served.
SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "LICENSE", "VERSION")


def swagger_ui_dir() -> Path | None:
    """Swagger UI's dist folder in the installed package, found without importing it."""
    spec = find_spec(SWAGGER_UI_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "dist" if spec and spec.submodule_search_locations else None
    return folder if folder and folder.is_dir() else None


SWAGGER_UI_PATH = "/docs/swagger-ui"


@bp.get("/docs")
def api_page():
    html = render_template("api.html", swagger_ui=SWAGGER_UI_PATH)
    return html, 200, {"Content-Security-Policy": CONTENT_SECURITY_POLICY}


@bp.get("/docs/")
def api_page_with_a_slash():
    """`/docs/`, as people often type it: a permanent redirect to the page."""
    return redirect(url_for(".api_page"), code=308)


@bp.get(f"{SWAGGER_UI_PATH}/<name>")
def swagger_ui_file(name: str):
    folder = swagger_ui_dir()
    if folder is None or name not in SWAGGER_UI_FILES:
        abort(404, description=f"no file {name[:60]!r} for the API page; it serves {', '.join(SWAGGER_UI_FILES)} "
                               f"from the {SWAGGER_UI_PACKAGE.replace('_', '-')} package (requirements-serve.txt)")
    return send_from_directory(folder, name, max_age=3600)


OPENAPI_PATHS: dict = {
    "/docs": {
        "get": {
            "summary": "This API, browsable and callable: Swagger UI rendering /openapi.json (no CDN)",
            "tags": ["page"],
            "responses": {
                "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/docs/": {
        "get": {
            "summary": "The API page's address with a trailing slash: a permanent redirect to /docs",
            "tags": ["page"],
            "responses": {
                "308": {"description": "Redirect to /docs", "headers": {"Location": {"schema": {"type": "string"}}}}
            },
        }
    },
    f"{SWAGGER_UI_PATH}/{{name}}": {
        "get": {
            "summary": "Swagger UI's own files, from the serve environment, for GET /docs",
            "tags": ["page"],
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": list(SWAGGER_UI_FILES)}}],
            "responses": {
                "200": {"description": "The file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "404": {"$ref": "#/components/responses/NotFound"},
            },
        }
    },
}
