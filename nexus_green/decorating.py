"""The shape every public decorator shares (layer L0): bare or called, and options checked at decoration.

DESIGN principle 10: every decorator works both as ``@name`` and as
``@name(...)`` (tenacity's habit), or refuses at decoration with a TypeError
that says what to pass. This module owns the pieces that make that uniform:

* :func:`is_bare` tells a decorator applied bare (its first argument is the
  function) from one called with options;
* :func:`bare_refused` is the TypeError for a decorator that needs options;
* :func:`check_options` refuses unknown options with
  :class:`UnknownOption` (a TypeError, as Python's own for an unexpected
  keyword, and a ConfigurationError), listing the valid names and pointing
  the names users bring from pybreaker, tenacity and the ``retry`` package
  to the right ones (:data:`FOREIGN_OPTIONS`).

Resilience, monitoring and middleware decorators all use it; it imports
nothing above :mod:`nexus_green.errors`.

Example::

    >>> check_options("retry", {"stop": 3}, ("max_attempts", "base_delay"))
    Traceback (most recent call last):
    ...
    nexus_green.decorating.UnknownOption: unknown retry option(s): stop (tenacity's stop=stop_after_attempt(n) is max_attempts=n here; a time limit is timeout=TimeoutConfig(overall=...) or nexus_green.deadline); valid options: base_delay, max_attempts
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigurationError

__all__ = ["FOREIGN_OPTIONS", "UnknownOption", "bare_refused", "check_options", "config_fields", "is_bare"]


class UnknownOption(ConfigurationError, TypeError):
    """An option a decorator or policy does not know; the message lists the valid ones.

    A TypeError (as Python's own for an unexpected keyword) and a
    :class:`~nexus_green.errors.ConfigurationError`.

    Example::

        >>> issubclass(UnknownOption, TypeError), issubclass(UnknownOption, ConfigurationError)
        (True, True)
    """


#: Option names from other libraries -> where they went here.
FOREIGN_OPTIONS: Mapping[str, str] = {
    # pybreaker (fail_max, success_threshold and reset_timeout are accepted by the breaker itself)
    "fail_counter": "pybreaker's fail_counter is a property of the breaker, not an option",
    # tenacity
    "stop": (
        "tenacity's stop=stop_after_attempt(n) is max_attempts=n here; a time limit is "
        "timeout=TimeoutConfig(overall=...) or nexus_green.deadline"
    ),
    "wait": "tenacity's wait= is base_delay=, multiplier= and max_delay= here (full jitter)",
    "retry": "tenacity's retry=retry_if_exception_type(...) is retry_on= here (exception classes or a predicate)",
    "reraise": "the last error is always raised as itself here (RetryBudgetExhausted when the budget refused)",
    "before_sleep": "subscribe to the 'retry.attempt' event on the bus= instead of before_sleep=",
    "after": "subscribe to the 'retry.attempt' event on the bus= instead of after=",
    "before": "subscribe to the 'retry.attempt' event on the bus= instead of before=",
    "retry_error_callback": "wrap the function in @fallback(...) instead of retry_error_callback=",
    "sleep": "pass clock= (its sleep() is used) instead of sleep=",
    # the retry / retrying / backoff packages
    "tries": "tries= is max_attempts= here",
    "stop_max_attempt_number": "stop_max_attempt_number= is max_attempts= here",
    "backoff": "backoff= is multiplier= here",
    "exceptions": "exceptions= is retry_on= here",
    "max_tries": "max_tries= is max_attempts= here",
    # common spellings of timeouts and limits
    "timeout_seconds": "timeout_seconds= is seconds= (the first argument) here",
    "max_concurrency": "max_concurrency= is max_concurrent= here",
}


def is_bare(first: Any, options: Mapping[str, Any]) -> bool:
    """True when a decorator got the function itself (``@name``) rather than options (``@name(...)``).

    Example::

        >>> is_bare(len, {}), is_bare("name", {}), is_bare(len, {"x": 1}), is_bare(int, {})
        (True, False, False, True)
    """
    return callable(first) and not options


def bare_refused(name: str, example: str) -> TypeError:
    """The TypeError of a decorator used bare that needs options: it says what to pass.

    Example::

        >>> str(bare_refused("failover", '@failover(["primary", "replica"])'))
        '@failover needs options, it cannot be used bare: write @failover(["primary", "replica"])'
    """
    return TypeError(f"@{name} needs options, it cannot be used bare: write {example}")


def config_fields(*configs: Any) -> tuple[str, ...]:
    """The field names of dataclass configs (classes or instances), in declaration order.

    Example::

        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     a: int = 1
        ...     b: int = 2
        >>> config_fields(C)
        ('a', 'b')
    """
    names: list[str] = []
    for config in configs:
        names.extend(f.name for f in dataclasses.fields(config) if f.name not in names)
    return tuple(names)


def check_options(what: str, options: Iterable[str], valid: Iterable[str]) -> None:
    """Raise :class:`UnknownOption` for options not in ``valid``: the valid names listed, foreign names pointed.

    Example::

        >>> check_options("bulkhead", {"max_concurrent": 2}, ("max_concurrent", "max_queue"))
        >>> check_options("bulkhead", {"max_concurrency": 2, "size": 1}, ("max_concurrent",))
        Traceback (most recent call last):
        ...
        nexus_green.decorating.UnknownOption: unknown bulkhead option(s): max_concurrency, size (max_concurrency= is max_concurrent= here); valid options: max_concurrent
    """
    known = set(valid)
    unknown = sorted(set(options) - known)
    if not unknown:
        return
    hints = [FOREIGN_OPTIONS[name] for name in unknown if name in FOREIGN_OPTIONS]
    message = f"unknown {what} option(s): {', '.join(unknown)}"
    if hints:
        message += f" ({'; '.join(hints)})"
    raise UnknownOption(f"{message}; valid options: {', '.join(sorted(known))}")
