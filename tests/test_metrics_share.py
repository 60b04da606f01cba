"""``/metrics`` merged over workers: whichever worker answers, totals never step back."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics_share import SharedMetrics


class Worker:
    """One worker's registry and share, as ``gateway serve --workers N`` makes them."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("demo_requests", "Requests.", registry=self.registry)
        self.shared = SharedMetrics(self.registry, directory)
        self.shared.pid = pid  # several "workers" live in this one test process

    def count(self) -> float:
        return self.registry.get_sample_value("demo_requests_total") or 0.0


def total(exposition: bytes) -> float:
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name == "demo_requests_total":
                return sample.value
    raise AssertionError("demo_requests_total missing")


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
    gone = Worker(tmp_path, 2**22 + 12345)  # no such process: pid_max is at most 2**22
    gone.requests.inc(5)
    gone.shared.publish()
    live = Worker(tmp_path, os.getpid())
    live.requests.inc()
    assert total(live.shared.render()) == 6


STEPS = st.lists(
    st.tuples(st.sampled_from(["inc", "publish", "scrape"]), st.integers(0, 2)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS)
def test_totals_are_monotonic_whichever_worker_answers(
    tmp_path_factory: object, steps: list[tuple[str, int]]
) -> None:
    directory = tmp_path_factory.mktemp("share")  # type: ignore[attr-defined]
    pids = [os.getpid(), os.getppid(), 1]
    workers = [Worker(directory, pid) for pid in pids]
    seen = 0.0
    for action, index in steps:
        worker = workers[index]
        if action == "inc":
            worker.requests.inc()
        elif action == "publish":
            worker.shared.publish()  # the periodic snapshot
        else:
            now = total(worker.shared.render())
            assert now >= seen, (seen, now)
            # Nothing is lost either: the answering worker's own count is live.
            assert now >= worker.count()
            seen = now
    assert total(workers[0].shared.render()) <= sum(w.count() for w in workers)
