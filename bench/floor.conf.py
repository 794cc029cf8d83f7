"""gunicorn settings for bench/floor.py: the service's worker settings, without its hooks.

The service's gunicorn.conf.py also checks the service's settings and prepares its metrics
directory; the floor and the SDK peer take only the serving settings from it, so that every
target of the bench runs with the same workers, threads and timeouts.
"""

import runpy
from pathlib import Path

_service = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))

bind = _service["bind"]
workers = _service["workers"]
worker_class = _service["worker_class"]
threads = _service["threads"]
timeout = _service["timeout"]
graceful_timeout = _service["graceful_timeout"]
keepalive = _service["keepalive"]
loglevel = _service["loglevel"]
accesslog = _service["accesslog"]
errorlog = _service["errorlog"]
limit_request_line = _service["limit_request_line"]
limit_request_fields = _service["limit_request_fields"]
