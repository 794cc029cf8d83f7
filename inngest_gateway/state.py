"""The gateway's place in an app: its state, the names it is found by, and the one accessor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from .db import OwnDatabase
    from .delivery import Delivery
    from .inngest import InngestClient
    from .limits import RateLimiter
    from .outbox import Deliverer, Writer
    from .settings import Settings

EXTENSION_KEY = "inngest_gateway"  # under app.extensions
BLUEPRINT = "inngest_gateway"  # not "api": host apps often have a blueprint of that name
POST_ENDPOINT = f"{BLUEPRINT}.post_events"


@dataclass
class GatewayState:
    """What `InngestGateway.init_app` made for one app: settings, sender, outbox, limits."""

    settings: Settings
    client: InngestClient
    outbox_db: OwnDatabase
    writer: Writer
    deliverer: Deliverer
    delivery: Delivery
    limiter: RateLimiter
    user_serializer: Callable[[Any], dict[str, Any]]
    redirect_to: str | Callable[[], str]
    login_url: str | None = None  # where a form post that needs a login goes; else 401
    host_db: Any = None  # the host's Flask-SQLAlchemy `db` whose session send() writes in


def gateway_state(app: Flask | None = None) -> GatewayState:
    """The gateway mounted on `app` (default: the current app)."""
    state: GatewayState = (app or current_app).extensions[EXTENSION_KEY]
    return state


def current_limiter() -> RateLimiter:
    """The current app's gateway's rate limiter, for `limits.limit(limiter=...)`."""
    return gateway_state().limiter
