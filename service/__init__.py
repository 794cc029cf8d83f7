"""inngest-gateway: turns browser posts into Inngest events."""

__version__ = "0.1.0"
