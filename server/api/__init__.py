"""The HTTP side: thin Flask blueprints around the serving core, and the hooks and error handlers
that `server.app.create_app` wires together."""
