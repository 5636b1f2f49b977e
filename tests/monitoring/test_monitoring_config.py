"""MonitoringConfiguration: defaults and validation."""

from __future__ import annotations

import dataclasses

import pytest

from nexus_green.errors import ConfigurationError
from nexus_green.monitoring.config import MonitoringConfiguration


def test_defaults_match_the_issue() -> None:
    cfg = MonitoringConfiguration()
    assert cfg.history_interval == 1.0 and cfg.history_points == 600  # one per second for 10 minutes
    assert cfg.relative_accuracy <= 0.01
    assert cfg.statsd_interval == 10.0 and cfg.statsd_enabled is False
    assert cfg.quantiles == (0.5, 0.95, 0.99, 0.999)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sample_rate = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"history_interval": 0}, "history_interval must be a positive number"),
        ({"history_seconds": float("inf")}, "history_seconds must be a positive number"),
        ({"rate_window": True}, "rate_window must be a positive number"),
        ({"sample_rate": 0}, "sample_rate must be in"),
        ({"statsd_sample_rate": 1.5}, "statsd_sample_rate must be in"),
        ({"relative_accuracy": 0.05}, "relative_accuracy must be in"),
        ({"numpy": "yes"}, "numpy must be None, True or False"),
        ({"quantiles": ()}, "quantiles must be"),
        ({"quantiles": (0.5, 2)}, "quantiles must be"),
        ({"max_series": 0}, "max_series must be an integer >= 1"),
        ({"max_tracked_connections": 1.5}, "max_tracked_connections must be an integer"),
        ({"closed_connections_kept": -1}, "closed_connections_kept must be an integer >= 0"),
        ({"statsd_port": 0}, "statsd_port must be 1-65535"),
        ({"statsd_host": ""}, "statsd_host must not be empty"),
        ({"error_rate_degraded": 0.5, "error_rate_unhealthy": 0.1}, "error_rate_unhealthy"),
        ({"hub_lag_degraded": -1}, "hub_lag_degraded must be a positive number"),
        ({"pool_utilisation_degraded": 0}, "pool_utilisation_degraded must be"),
        ({"history_seconds": 0.4}, "must cover at least one history_interval"),
    ],
)
def test_bad_values_name_the_option(changes: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        MonitoringConfiguration(**changes)


def test_replace_validates_and_rejects_unknown_options() -> None:
    cfg = MonitoringConfiguration().replace(history_seconds=30, history_interval=0.5)
    assert cfg.history_points == 60
    with pytest.raises(ConfigurationError, match="unknown monitoring option"):
        MonitoringConfiguration().replace(statsd_hots="x")
    with pytest.raises(ConfigurationError, match="sample_rate"):
        MonitoringConfiguration().replace(sample_rate=-1)
