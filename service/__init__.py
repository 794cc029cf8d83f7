"""inngest-gateway: turns browser posts into Inngest events.

Installed, this package is `inngest_gateway`; in the repository its source folder is
`service/`. Every import inside it is relative, so both names work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["InngestGateway", "__version__"]

if TYPE_CHECKING:
    from .extension import InngestGateway


def __getattr__(name: str) -> Any:
    # Imported on first use: `service.settings` alone (gunicorn's master reads the settings
    # with it) must not load prometheus-client before its multiprocess directory exists.
    if name == "InngestGateway":
        from .extension import InngestGateway

        return InngestGateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
