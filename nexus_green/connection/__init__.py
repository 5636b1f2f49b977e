"""Connections (layer L3): the multiplexed Connection, its lifecycle table and the pool.

Example::

    >>> from nexus_green.connection import ConnectionOptions
    >>> ConnectionOptions().heartbeat_interval
    15.0
"""

from .connection import Connection, ConnectionOptions
from .pool import ConnectionPool
from .state import STATES, TRANSITIONS, Lifecycle

__all__ = ["Connection", "ConnectionOptions", "ConnectionPool", "Lifecycle", "STATES", "TRANSITIONS"]
