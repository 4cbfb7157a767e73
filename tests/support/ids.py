"""Unique ids so tests never collide on the shared session database and broker."""

from __future__ import annotations

import itertools
import os
import uuid

_counter = itertools.count(1)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def unique_topic(prefix: str = "t") -> str:
    return unique_id(prefix).replace("-", ".")
