"""`uvicorn server:app`: the webhook server, run from the repository root. `engine serve` runs the same app."""

from engine.server.app import create_app

app = create_app()
