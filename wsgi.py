"""The WSGI entry point for gunicorn and `flask --app wsgi`: the only module-level app."""

import sys

from inngest_gateway import ConfigError
from service.app import create_app

try:
    app = create_app()
except ConfigError as exc:
    sys.exit(f"inngest-gateway: configuration error: {exc}")
