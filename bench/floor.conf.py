"""gunicorn settings for bench/floor.py: a plain Flask app as gunicorn runs one by default.

The yardsticks are what a team would deploy without the gateway: gunicorn's default worker
class (sync: one request at a time per worker, a new connection per request), with the
same number of workers, bind address and limits as the service (read from its
gunicorn.conf.py, without its hooks, which check the service's settings).
"""

import runpy
from pathlib import Path

_service = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))

bind = _service["bind"]
workers = _service["workers"]
worker_class = "sync"  # gunicorn's default
timeout = _service["timeout"]
graceful_timeout = _service["graceful_timeout"]
keepalive = _service["keepalive"]
loglevel = _service["loglevel"]
accesslog = _service["accesslog"]
errorlog = _service["errorlog"]
limit_request_line = _service["limit_request_line"]
limit_request_fields = _service["limit_request_fields"]
