"""The distribution's version, read by setup.cfg and sent to Inngest in the SDK header."""

__version__ = "0.1.0"
