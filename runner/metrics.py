"""Prometheus metrics of one runner process, in a registry of its own."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "PluginHealth", "PluginRecord"]


@dataclass(frozen=True)
class PluginRecord:
    """When a plugin's hook calls last succeeded and last failed in this process."""

    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None


class PluginHealth:
    """The latest outcome of each plugin's calls, for ``/readyz``; thread-safe."""

    def __init__(self) -> None:
        self._records: dict[str, PluginRecord] = {}
        self._lock = threading.Lock()

    def succeeded(self, plugin: str, *, now: float | None = None) -> None:
        when = time.time() if now is None else now
        with self._lock:
            old = self._records.get(plugin, PluginRecord())
            self._records[plugin] = PluginRecord(
                when, old.last_error_at, old.last_error
            )

    def failed(self, plugin: str, error: str, *, now: float | None = None) -> None:
        when = time.time() if now is None else now
        with self._lock:
            old = self._records.get(plugin, PluginRecord())
            self._records[plugin] = PluginRecord(old.last_success_at, when, error)

    def get(self, plugin: str) -> PluginRecord:
        with self._lock:
            return self._records.get(plugin, PluginRecord())


class Metrics:
    """Counters and histograms the ingress, the dispatcher and the executor update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.plugin_health = PluginHealth()
        r = self.registry
        self.deliveries = Counter(
            "agentmail_runner_deliveries",
            "Webhook deliveries by outcome (accepted, duplicate, rejected, ...).",
            ["outcome"],
            registry=r,
        )
        self.verification_failures = Counter(
            "agentmail_runner_verification_failures",
            "Deliveries that failed signature verification.",
            registry=r,
        )
        self.events_finished = Counter(
            "agentmail_runner_events_finished",
            "Events that left the queue, by final status (done, dead) and retries.",
            ["status"],
            registry=r,
        )
        self.plugin_calls = Counter(
            "agentmail_runner_plugin_calls",
            "Plugin hook calls by plugin, stage and outcome.",
            ["plugin", "stage", "outcome"],
            registry=r,
        )
        self.plugin_seconds = Histogram(
            "agentmail_runner_plugin_seconds",
            "Time spent in plugin hook calls.",
            ["plugin", "stage"],
            registry=r,
        )
        self.actions = Counter(
            "agentmail_runner_actions",
            "Actions by kind and outcome (done, vetoed, failed, rejected, recorded).",
            ["kind", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "agentmail_runner_queue_depth",
            "Events by status, read from the store at scrape time.",
            ["status"],
            registry=r,
        )
        self.queue_lag = Gauge(
            "agentmail_runner_queue_lag_seconds",
            "Age of the oldest event that is due and not yet claimed.",
            registry=r,
        )
        self.suppressions = Gauge(
            "agentmail_runner_suppressions",
            "Addresses on the bounce tracker's suppression list, read at scrape time.",
            registry=r,
        )
