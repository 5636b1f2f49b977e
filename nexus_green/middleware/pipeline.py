"""The pipeline contract, re-exported from its home in layer L0 (:mod:`nexus_green.pipeline`).

The contract moved below ``middleware/`` and ``resilience/`` so that both can
implement it (resilience/ may not import middleware/). This module keeps the
old import path working; new code imports :mod:`nexus_green.pipeline`.

Example::

    >>> from nexus_green import pipeline
    >>> Pipeline is pipeline.Pipeline and ORDER_RETRY < ORDER_AUTH < ORDER_CACHE
    True
"""

from __future__ import annotations

from ..pipeline import *  # noqa: F403 - the whole contract, under its old path
from ..pipeline import __all__ as __all__
