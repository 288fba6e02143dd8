"""`uvicorn rlkeel.server.asgi:app`: the app built from the environment."""

from rlkeel.server.app import create_app

app = create_app()
