"""aftercare: exactly-once post-purchase automation for online shops."""

__version__ = "0.1.0"
