"""Library logging: structlog's API on top of the standard ``logging`` module.

A library must not print: these loggers configure nothing globally and hand their rendered
events to ``logging.getLogger(name)``, so the application decides (levels, handlers; by default
only warnings reach stderr). ``log.info("event", key=value)`` as everywhere with structlog.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


def get_logger(name: str) -> Any:
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
