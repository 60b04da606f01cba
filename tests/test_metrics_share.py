"""``/metrics`` merged over workers: whichever worker answers, totals never step back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics_share
from gateway.metrics_share import SharedMetrics, retire

# Pids no process has: pid_max is at most 2**22.
DEAD = 2**22 + 1


class Worker:
    """One worker's registry and share, as ``gateway serve --workers N`` makes them."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("demo_requests", "Requests.", registry=self.registry)
        self.inflight = Gauge("demo_inflight", "In flight.", registry=self.registry)
        self.shared = SharedMetrics(self.registry, directory)
        self.shared.pid = pid  # several "workers" live in this one test process

    def count(self) -> float:
        return self.registry.get_sample_value("demo_requests_total") or 0.0


def total(exposition: bytes, name: str = "demo_requests_total") -> float:
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} missing")


def test_a_scrape_by_the_other_worker_does_not_step_back(tmp_path: Path) -> None:
    a, b = Worker(tmp_path, os.getpid()), Worker(tmp_path, os.getppid())
    a.shared.publish()
    a.requests.inc()  # after a's last periodic snapshot
    b.requests.inc()
    b.shared.publish()
    assert total(a.shared.render()) == 2  # a's live figure plus b's snapshot
    # b answers next; before the fix it merged its live 1 with a's stale 0.
    assert total(b.shared.render()) == 2


def test_a_replaced_workers_counts_stay_in_the_total(tmp_path: Path) -> None:
    gone = Worker(tmp_path, DEAD)
    gone.requests.inc(5)
    gone.shared.publish()
    live = Worker(tmp_path, os.getpid())
    live.requests.inc()
    assert total(live.shared.render()) == 6


def test_a_retired_worker_is_folded_into_one_file(tmp_path: Path) -> None:
    live = Worker(tmp_path, os.getpid())
    live.requests.inc()
    live.inflight.set(1)
    live.shared.publish()
    for n, pid in enumerate((DEAD, DEAD + 1, DEAD + 2), start=1):
        dead = Worker(tmp_path, pid)
        dead.requests.inc(10 * n)
        dead.inflight.set(100)  # a dead worker's gauges describe nothing any more
        dead.shared.publish()
        retire(tmp_path, pid)
        assert not (tmp_path / f"{pid}.prom").exists()
    (tmp_path / f"{DEAD + 3}.tmp").write_text("demo_requests_total 5")  # killed mid-publish
    retire(tmp_path, DEAD + 3)  # never published a whole snapshot: nothing to keep
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}.prom", "retired.prom"]
    exposition = live.shared.render()
    assert total(exposition) == 1 + 10 + 20 + 30
    assert total(exposition, "demo_inflight") == 1
    assert "folded" not in exposition.decode()
    # A later worker that is given a retired worker's pid is counted again.
    again = Worker(tmp_path, DEAD)
    again.requests.inc(1000)
    again.shared.publish()
    assert total(live.shared.render()) == 1 + 60 + 1000


def test_a_scrape_that_overlaps_a_retirement_counts_every_worker_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = Worker(tmp_path, os.getpid())
    dead = Worker(tmp_path, DEAD)
    dead.requests.inc(7)
    dead.shared.publish()
    listing = SharedMetrics._workers
    calls = []

    def retiring_meanwhile(self: SharedMetrics, skip: set[int]) -> object:
        calls.append(skip)
        if len(calls) == 1:
            # The supervisor folds the dead worker after this scrape read
            # retired.prom and before it lists the workers' files.
            retire(tmp_path, DEAD)
        return listing(self, skip)

    monkeypatch.setattr(SharedMetrics, "_workers", retiring_meanwhile)
    assert total(live.shared.render()) == 7
    assert len(calls) == 2  # it noticed and read again


def test_retired_file_header_round_trips(tmp_path: Path) -> None:
    path = tmp_path / metrics_share.RETIRED
    metrics_share._write_retired(path, 3, {12, 5}, "x_total 1.0\n")
    assert metrics_share._read_retired(path) == (3, {5, 12}, "x_total 1.0\n")
    assert metrics_share._read_retired(path, header_only=True) == (3, {5, 12}, "")
    assert metrics_share._read_retired(tmp_path / "none") == (0, set(), "")


STEPS = st.lists(
    st.tuples(st.sampled_from(["inc", "publish", "scrape", "die"]), st.integers(0, 2)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS)
def test_totals_are_monotonic_whichever_worker_answers(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    directory = tmp_path_factory.mktemp("share")
    pids = iter(range(DEAD, DEAD + 100))
    workers = [Worker(directory, next(pids)) for _ in range(3)]
    retired = 0.0
    seen = 0.0
    for action, index in steps:
        worker = workers[index]
        if action == "inc":
            worker.requests.inc()
        elif action == "publish":
            worker.shared.publish()  # the periodic snapshot
        elif action == "die":  # killed outright (what it counted since its
            # last snapshot is lost), reaped, folded and replaced
            published = worker.shared.directory / f"{worker.shared.pid}.prom"
            kept = total(published.read_bytes()) if published.exists() else 0.0
            retired += kept
            retire(directory, worker.shared.pid)
            workers[index] = Worker(directory, next(pids))
        else:
            now = total(worker.shared.render())
            assert now >= seen, (seen, now)
            # Nothing is lost either: the answering worker's own count is live.
            assert now >= worker.count() + retired
            seen = now
    everything = sum(w.count() for w in workers) + retired
    assert total(workers[0].shared.render()) <= everything
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []
