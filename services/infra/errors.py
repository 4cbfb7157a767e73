from __future__ import annotations


class InfraError(RuntimeError):
    """A part (database, broker, service) failed to start or went away; the message names the cause."""
