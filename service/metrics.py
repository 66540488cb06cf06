"""Prometheus metrics of the whole deployment, served by the API's ``/metrics``.

Workers run in other processes (and machines), so what they measure - finished jobs and their
durations, rendered images - is counted in Redis, and the API's collector reads it at scrape
time, with the queue depth. The API's own request latencies are ordinary in-process metrics.
"""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from rq import Queue

JOB_DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, float("inf"))
_JOBS = "nerfsim:metrics:jobs"
_DURATION = "nerfsim:metrics:job_seconds"
_RENDER = "nerfsim:metrics:render"


def count_finished_job(connection: redis.Redis, status: str, seconds: float) -> None:
    with connection.pipeline() as pipe:
        pipe.hincrby(_JOBS, status, 1)
        for bound in JOB_DURATION_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(_DURATION, f"le:{bound}", 1)
        pipe.hincrbyfloat(_DURATION, "sum", seconds)
        pipe.execute()


def count_rendered_images(connection: redis.Redis, images: int) -> None:
    connection.hincrby(_RENDER, "images", images)


class ClusterCollector:
    """Queue depth, running jobs, finished jobs by status, job durations, rendered images."""

    def __init__(self, connection: redis.Redis, queue: Queue) -> None:
        self.redis, self.queue = connection, queue

    def collect(self):
        depth = GaugeMetricFamily("nerfsim_queue_depth", "Jobs waiting in the queue", labels=["queue"])
        depth.add_metric([self.queue.name], self.queue.count)
        yield depth
        running = GaugeMetricFamily("nerfsim_jobs_running", "Jobs being worked on", labels=["queue"])
        running.add_metric([self.queue.name], self.queue.started_job_registry.count)
        yield running
        finished = CounterMetricFamily("nerfsim_jobs_finished", "Jobs finished, by final status", labels=["status"])
        for status, count in sorted(self.redis.hgetall(_JOBS).items()):
            finished.add_metric([status.decode()], float(count))
        yield finished
        raw = {k.decode(): float(v) for k, v in self.redis.hgetall(_DURATION).items()}
        buckets = [(("+Inf" if b == float("inf") else str(b)), raw.get(f"le:{b}", 0.0)) for b in JOB_DURATION_BUCKETS]
        durations = HistogramMetricFamily("nerfsim_job_duration_seconds", "Wall time of finished jobs")
        durations.add_metric([], buckets, sum_value=raw.get("sum", 0.0))
        yield durations
        images = CounterMetricFamily("nerfsim_rendered_images", "Images rendered by the closed loops (rate() is the render throughput)")
        images.add_metric([], float(self.redis.hget(_RENDER, "images") or 0))
        yield images


def build_registry(connection: redis.Redis, queue: Queue) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the cluster collector, and the API's request-latency histogram."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(connection, queue))
    latency = Histogram("nerfsim_http_request_seconds", "API request latency", ["method", "route", "status"],
                        registry=registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
    return registry, latency
