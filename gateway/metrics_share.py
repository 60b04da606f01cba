"""``/metrics`` over several worker processes (``gateway serve --workers N``).

Each worker counts in its own memory (no locks, no shared-memory writes on
the hot path) and publishes a snapshot of its registry every second into a
directory the supervisor wiped at start: ``<dir>/<pid>.prom``, written to a
temporary name and renamed, so a reader never sees half a file. A scrape,
answered by whichever worker the kernel hands the connection to, merges its
own live registry with every other worker's latest snapshot (SPEC §5):

- counters and histograms are summed over all workers, including workers that
  have exited, so a total never goes backwards when a worker is replaced;
- ``gateway_backend_up`` is the minimum over live workers (a region is up
  only if every worker sees it up);
- other gauges (``gateway_inflight_requests``, ``gateway_active_streams``)
  are summed over live workers; ``gateway_build_info`` and timestamps take
  the maximum.

The answering worker first publishes its own figures, then reads the others'
(at most a second old). That order keeps every total monotonic from one
scrape to the next even when a different worker answers each time: each
worker's file only ever grows, and the worker that answered the last scrape
left its file at least at the figures that scrape showed. (Merging one's live
figures with a stale file of the previous answerer made a counter step back,
which Prometheus reads as a reset and ``rate()`` as a spike.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SNAPSHOT_INTERVAL = 1.0
_MIN_GAUGES = frozenset({"gateway_backend_up"})
_MAX_GAUGES = frozenset(
    {"gateway_build_info", "gateway_config_last_reload_success_timestamp_seconds"}
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedMetrics:
    """Publishes this worker's registry and merges everyone's for a scrape."""

    def __init__(self, registry: CollectorRegistry, directory: str | os.PathLike[str]) -> None:
        self.registry = registry
        self.directory = Path(directory)
        self.pid = os.getpid()

    def publish(self) -> bytes:
        """Write this worker's snapshot (atomically) and return it."""
        data = generate_latest(self.registry)
        path = self.directory / f"{self.pid}.prom"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return data

    def _snapshots(self) -> Iterable[tuple[bool, str]]:
        for path in self.directory.glob("*.prom"):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == self.pid:
                continue
            try:
                text = path.read_text()
            except OSError:
                continue  # replaced or removed between glob and read
            yield _alive(pid), text

    def render(self) -> bytes:
        """The merged exposition of every worker."""
        try:
            own = self.publish()  # before reading the others: see the module docstring
        except OSError:
            own = generate_latest(self.registry)
        sources = [(True, own.decode()), *self._snapshots()]
        merged = _Merged()
        for alive, text in sources:
            for family in text_string_to_metric_families(text):
                merged.add(family, alive)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(merged)
        return generate_latest(registry)


class _Merged(Collector):
    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        self._values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(self, family: Metric, alive: bool) -> None:
        gauge = family.type == "gauge"
        if gauge and not alive:
            return  # a dead worker's gauges describe nothing any more
        if family.name not in self._families:
            self._families[family.name] = Metric(family.name, family.documentation, family.type)
            self._values[family.name] = {}
        values = self._values[family.name]
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in values:
                values[key] = sample.value
            elif family.name in _MIN_GAUGES:
                values[key] = min(values[key], sample.value)
            elif family.name in _MAX_GAUGES:
                values[key] = max(values[key], sample.value)
            else:
                values[key] += sample.value

    def collect(self) -> list[Metric]:
        out = []
        for name, family in self._families.items():
            for (sample_name, labels), value in self._values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            out.append(family)
        return out
