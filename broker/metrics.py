"""Every Prometheus metric of the broker process, defined once.

Names follow nightjar_<stage>_<noun>_total{status, reason} and nightjar_<stage>_seconds.
broker/health.py serves them on /metrics beside the probes; workers keep their own registry.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From the survey's produce time to ours: seconds on a good night, minutes when lagging.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

CONSUMED = Counter("nightjar_consume_messages_total", "Messages read from Kafka", ["topic"])
REJECTED = Counter(
    "nightjar_reject_alerts_total", "Alerts dead-lettered, by reason", ["survey", "reason"]
)
DEAD_LETTER_SUMMARIES = Counter(
    "nightjar_publish_dead_letter_summaries_total",
    "Dead letters sent as a summary (raw bytes refused: too large or invalid), by reason",
    ["reason"],
)
STORED = Counter("nightjar_store_alerts_total", "Alerts upserted into MongoDB", ["survey"])
PUBLISHED = Counter(
    "nightjar_publish_messages_total", "Messages delivered to output topics", ["topic"]
)
ANNOTATIONS = Counter(
    "nightjar_annotate_scores_total", "Model scores attached to alerts", ["model"]
)
MODEL_SKIPS = Counter(
    "nightjar_annotate_skips_total", "Alerts a model gave no score for", ["model", "reason"]
)
SCORES = Histogram(
    "nightjar_annotate_score",
    "Scores attached to alerts, per model (a model stuck at one value shows here)",
    ["model"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
OUTPUT_LATENCY = Histogram(
    "nightjar_publish_latency_seconds",
    "Seconds from the input message's Kafka timestamp to its annotated copy being produced",
    buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "nightjar_stage_seconds", "Wall time of one batch in a stage", ["stage"], buckets=_BUCKETS
)
BATCH_SIZE = Histogram(
    "nightjar_batch_alerts", "Messages per batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 5000)
)
IN_FLIGHT = Gauge("nightjar_dispatch_in_flight_batches", "Batches submitted to Dask, not finished")
CONSUMER_LAG = Gauge(
    "nightjar_consume_lag_messages", "Consumer lag per partition", ["topic", "partition"]
)
COMMITTED = Counter(
    "nightjar_consume_commits_total", "Offset commits after store and publish", ["status"]
)
PAUSED = Gauge("nightjar_consume_paused", "1 while partitions are paused for back-pressure")
# The gauge misses pauses shorter than a scrape interval; the counter does not.
PAUSES = Counter("nightjar_consume_pauses_total", "Times partitions were paused (back-pressure)")


DEPENDENCY_BLOCKED = Gauge(
    "nightjar_dependency_blocked",
    "1 while the process waits for this dependency (mongodb, kafka, dask, fritz)",
    ["dependency"],
)
# Exported at 0 from the start, so dashboards and alerts see them before the first block.
KNOWN_DEPENDENCIES = ("mongodb", "kafka", "dask", "fritz")


# Filters and the SkyPortal poster (broker/filters.py, broker/outbox.py, broker/post.py).
FILTER_MATCHES = Counter("nightjar_filter_matches_total", "Alerts that passed a filter", ["filter"])
FILTER_ERRORS = Counter(
    "nightjar_filter_errors_total", "Filter queries that failed on a batch", ["filter"]
)
POST_REQUESTS = Counter(
    "nightjar_post_requests_total",
    "SkyPortal API calls, by call and HTTP status (or timeout / connection)",
    ["call", "status"],
)
POST_JOBS = Counter(
    "nightjar_post_jobs_total", "Outbox jobs handled, by outcome (done, retry, failed)", ["status"]
)
POST_QUEUE = Gauge("nightjar_post_queue_jobs", "Outbox jobs waiting to be posted")
POST_OLDEST = Gauge(
    "nightjar_post_oldest_pending_seconds", "Age of the oldest outbox job waiting to be posted"
)
POST_SECONDS = Histogram("nightjar_post_seconds", "Wall time to post one job", buckets=_BUCKETS)
