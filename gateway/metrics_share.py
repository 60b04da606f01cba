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

When the supervisor reaps a worker it folds that worker's counters and
histograms into one ``retired.prom`` and removes the worker's file
(:func:`retire`), so a worker that keeps crashing cannot grow the directory,
and with it the cost of every scrape, without bound. The fold is switched in
by one rename, and a reader that sees ``retired.prom`` replaced while it was
reading starts over, so no scrape counts a worker twice or not at all.

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
RETIRED = "retired.prom"
# First line of retired.prom: a generation (one more at every write, so a
# reader can tell that the file changed under it) and the pids whose files it
# has absorbed but which may still be on disk for a moment (readers skip them).
_HEADER = "# gateway retired:"
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
        _replace(self.directory / f"{self.pid}.prom", data)
        return data

    def _snapshots(self) -> list[tuple[bool, str]]:
        retired = self.directory / RETIRED
        for _ in range(5):
            generation, folded, text = _read_retired(retired)
            found = [(False, text)] if text else []
            found.extend(self._workers(skip=folded | {self.pid}))
            if _read_retired(retired, header_only=True)[0] == generation:
                break
        return found  # five changes in one scrape: the supervisor is reaping a crowd

    def _workers(self, skip: set[int]) -> Iterable[tuple[bool, str]]:
        for path in self.directory.glob("*.prom"):
            try:
                pid = int(path.stem)
            except ValueError:
                continue  # retired.prom
            if pid in skip:
                continue
            try:
                text = path.read_text()
            except OSError:
                continue  # removed between glob and read (retired)
            yield _alive(pid), text

    def render(self) -> bytes:
        """The merged exposition of every worker."""
        try:
            own = self.publish()  # before reading the others: see the module docstring
        except OSError:
            own = generate_latest(self.registry)
        sources = [(True, own.decode()), *self._snapshots()]
        return _merge(sources)


def retire(directory: str | os.PathLike[str], pid: int) -> None:
    """Fold the exited worker ``pid``'s counters and histograms into ``retired.prom``
    and remove its file (called by the supervisor, the only writer of that file).

    Three steps, each seen whole by a reader: retired.prom with the fold and
    ``pid`` listed (readers skip its file from now on); the file removed;
    retired.prom again without ``pid`` listed, so a later worker that is given
    the same pid is counted.
    """
    directory = Path(directory)
    path = directory / f"{pid}.prom"
    retired = directory / RETIRED
    # Killed in the middle of a publish: the half-written snapshot goes too.
    path.with_suffix(".tmp").unlink(missing_ok=True)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return  # it never published (died at start): nothing to keep
    generation, folded, kept = _read_retired(retired)
    body = _merge([(False, kept), (False, text)]).decode()
    _write_retired(retired, generation + 1, folded | {pid}, body)
    path.unlink()
    _write_retired(retired, generation + 2, folded, body)


def _read_retired(path: Path, header_only: bool = False) -> tuple[int, set[int], str]:
    """(generation, folded pids, exposition) of retired.prom; (0, {}, "") while there is none."""
    try:
        with path.open() as file:
            first = file.readline()
            body = "" if header_only else file.read()
    except FileNotFoundError:
        return 0, set(), ""
    generation, *pids = first[len(_HEADER) :].split()
    return int(generation), {int(pid) for pid in pids}, body


def _write_retired(path: Path, generation: int, folded: set[int], body: str) -> None:
    pids = "".join(f" {pid}" for pid in sorted(folded))
    _replace(path, f"{_HEADER} {generation}{pids}\n{body}".encode())


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, whole."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _merge(sources: Iterable[tuple[bool, str]]) -> bytes:
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
