"""The WSGI entry point for gunicorn and `flask --app wsgi`: the only module-level app."""

import sys

from service.app import create_app
from service.settings import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    sys.exit(f"inngest-gateway: configuration error: {exc}")
