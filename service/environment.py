"""The service's settings source: the process environment over `.env` (python-dotenv).

The extension reads only `app.config`; reading `.env` is the standalone service's business,
so python-dotenv is the service's dependency, not the distribution's.
"""

from __future__ import annotations

import os

from dotenv import dotenv_values


def environment(dotenv_path: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """The process environment over the values of `.env`, when that file exists."""
    values = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}
    values.update(os.environ)
    return values
