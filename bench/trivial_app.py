"""The floor of the stack: Flask under the server's own launcher (server/lifecycle.py), answering a constant JSON."""
from __future__ import annotations

from flask import Flask

ANSWER = {"status": "ok"}


def create_app() -> Flask:
    """An app whose only route does no work: what the HTTP layer + Flask cost per request."""
    app = Flask(__name__)

    @app.get("/")
    def constant():
        return ANSWER

    return app


app = create_app()
