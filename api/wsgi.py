"""The WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'``."""

from api import create_app
from shared.logging import configure_logging

configure_logging()
app = create_app()
