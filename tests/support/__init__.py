"""Helpers shared by every test folder: unique ids, polling waits, one cast of parties, builders and flows.

Import from the package (``from tests.support import unique_id, wait_until``) or its modules
(``tests.support.cast``, ``tests.support.flows``, ...).
"""

from tests.support.ids import unique_id, unique_topic
from tests.support.waits import wait_until, wait_until_async

__all__ = ["unique_id", "unique_topic", "wait_until", "wait_until_async"]
