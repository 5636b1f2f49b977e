"""Child processes that the testing kit starts die with the process that started them.

A test process killed by a timeout (or a crash) runs no finalizer, and the
servers it started (the legacy app's backend, a redis-server) would outlive it
and hold their ports. On Linux the child asks the kernel for a SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``); elsewhere nothing is done.

Example::

    >>> import subprocess, sys
    >>> subprocess.run([sys.executable, "-c", "print('ok')"], preexec_fn=preexec_die_with_parent(),
    ...                capture_output=True, text=True, check=True).stdout
    'ok\\n'
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Optional

__all__ = ["preexec_die_with_parent"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:
        pass


def preexec_die_with_parent() -> Optional[Callable[[], None]]:
    """The ``preexec_fn`` for ``subprocess.Popen`` that makes the child die with its parent (None off Linux).

    Example::

        >>> callable(preexec_die_with_parent()) or not sys.platform.startswith("linux")
        True
    """
    return _die_with_parent if sys.platform.startswith("linux") else None
