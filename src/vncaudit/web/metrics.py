"""Prometheus metrics of one web app instance (served at /metrics).

Owns: the metric objects, in a registry private to the app, so several apps in one process
(tests) never collide. Must not: carry targets, addresses or any per-user label (counts only).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter("vncaudit_web_scans_submitted", "Scans accepted", registry=r)
        self.refused = Counter("vncaudit_web_scans_refused", "Scan requests refused",
                               ["reason"], registry=r)
        self.finished = Counter("vncaudit_web_scans_finished", "Scans ended", ["status"],
                                registry=r)
        self.probes = Counter("vncaudit_web_probes", "Ports probed, by resulting state",
                              ["state"], registry=r)
        self.queued = Gauge("vncaudit_web_scans_queued", "Scans waiting for a worker",
                            registry=r)
        self.running = Gauge("vncaudit_web_scans_running", "Scans running", registry=r)
        self.scan_seconds = Histogram("vncaudit_web_scan_duration_seconds",
                                      "Wall time of a scan", registry=r,
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                               300, 1800))
        self.requests = Counter("vncaudit_web_http_requests", "HTTP responses", ["status"],
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
