"""Scale-out on one machine: 1 API process, 1 Redis, 3 worker processes and 12 small jobs, each
run exactly once; throughput with 3 workers against 1 worker in the same run
(benchmarks/scale.py measures the same on more jobs, with queue waits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.scale import WorkerGroup, scale_rounds, small_job
from nerfsim_client import Client
from service.settings import ServiceSettings

pytestmark = pytest.mark.slow


def test_twelve_jobs_on_three_workers_run_once_each_and_faster_than_on_one(
        api_client: Client, settings: ServiceSettings, small_job_inputs, tmp_path: Path, record_property) -> None:
    requests = [small_job(*small_job_inputs, seed=seed) for seed in range(12)]
    with WorkerGroup(settings, tmp_path / "workers.log") as group:
        three, one = scale_rounds(api_client, settings, group, requests, requests[:4])

    for result in (one, three):
        assert [r["status"] for r in result.records] == ["succeeded"] * len(result.records), [r["error"] for r in result.records]
        assert all(r["attempts"] == 1 for r in result.records)
        # Started once each, by one worker: RQ handed no job to two workers.
        assert set(result.starts.values()) == {1} and len(result.starts) == len(result.records)
    assert len(three.ran_on) == 3 and sum(three.ran_on.values()) == 12  # every worker took jobs
    # Jobs really ran side by side: some started before others finished.
    intervals = sorted((r["started_at"], r["finished_at"]) for r in three.records)
    assert any(later_start < earlier_end for (_, earlier_end), (later_start, _) in zip(intervals, intervals[1:]))

    ratio = three.throughput_per_min / one.throughput_per_min
    record_property("throughput_3_over_1", round(ratio, 2))
    print(f"\n{one.summary()}\n{three.summary()}\nthroughput_3_over_1={ratio:.2f} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    # CPU-bound jobs gain at most min(3, cores)x; on a shared machine other work takes its
    # share, so this only asserts a real gain (benchmarks/scale.py reports the number).
    assert ratio > 1.15, (one.summary(), three.summary())
