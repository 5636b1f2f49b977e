"""Connections (layer L3): Connection, its options, session and traffic stats, the lifecycle table, the pool.

Example::

    >>> from nexus_green.connection import ConnectionOptions
    >>> ConnectionOptions().heartbeat_interval
    15.0
"""

from .connection import Connection
from .options import ConnectionOptions
from .pool import ConnectionPool
from .state import STATES, TRANSITIONS, Lifecycle

__all__ = ["Connection", "ConnectionOptions", "ConnectionPool", "Lifecycle", "STATES", "TRANSITIONS"]
