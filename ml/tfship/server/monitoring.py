"""TF Serving's metrics and their Prometheus page (``--monitoring_config_file``).

The metric names, labels and buckets are those TF Serving registers
(``servables/tensorflow/util.cc``, ``saved_model_warmup_util.cc``, TF's
``cc/saved_model/loader.cc``); the page is written as ``util/prometheus_exporter.cc`` writes
it: ``# TYPE`` lines only, ``/`` in names turned into ``:``, cumulative histogram buckets with
``le`` limits and sums in ``absl::StrCat(double)``'s six significant digits, then ``+Inf``.

Unlike the real binary, the page lists only these serving metrics, not every TensorFlow
runtime metric the process happens to register.
"""

from __future__ import annotations

import bisect
import re
import threading


def _six_digits(value: float) -> str:
    """``absl::StrCat(double)``: ``%.6g``."""
    return f"{value:.6g}"


def _exponential(scale: float, growth: float, count: int) -> list[float]:
    """``monitoring::Buckets::Exponential``: ``count`` finite limits (then +Inf)."""
    limits, bound = [], scale
    for _ in range(count):
        limits.append(bound)
        bound *= growth
    return limits


LATENCY_BUCKETS = _exponential(10, 1.8, 33)  # microseconds, ~20 minutes at the top
EXAMPLE_BUCKETS = _exponential(1, 2, 15)


class _Metric:
    kind = "counter"

    def __init__(self, name: str, *labels: str) -> None:
        self.name = name
        self.labels = labels
        self.cells: dict[tuple[str, ...], object] = {}
        self.lock = threading.Lock()

    def prometheus_name(self) -> str:
        name = re.sub(r"[^a-zA-Z0-9_]", ":", self.name)
        return f"_{name}" if name[:1].isdigit() else name

    def _label_text(self, values: tuple[str, ...]) -> list[str]:
        out = []
        for key, value in zip(self.labels, values, strict=True):
            key = re.sub(r"[^a-zA-Z0-9]", "_", key)
            key = f"_{key}" if key[:1].isdigit() else key
            value = value.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{key}="{value}"')
        return out


class Counter(_Metric):
    """``monitoring::Counter<N>``: an int64 per label set."""

    def increment(self, *values: str, by: int = 1) -> None:
        with self.lock:
            self.cells[values] = self.cells.get(values, 0) + by

    def lines(self) -> list[str]:
        name = self.prometheus_name()
        out = [f"# TYPE {name} counter"]
        with self.lock:
            for values, count in sorted(self.cells.items()):
                out.append(f"{name}{{{','.join(self._label_text(values))}}} {count}")
        return out


class Histogram(_Metric):
    """``monitoring::Sampler<N>``: bucket counts (value < limit) and the sum, per label set."""

    kind = "histogram"

    def __init__(self, name: str, limits: list[float], *labels: str) -> None:
        super().__init__(name, *labels)
        self.limits = limits

    def add(self, value: float, *values: str) -> None:
        with self.lock:
            buckets, total = self.cells.get(values, ([0] * (len(self.limits) + 1), 0.0))
            buckets[bisect.bisect_right(self.limits, value)] += 1
            self.cells[values] = (buckets, total + value)

    def lines(self) -> list[str]:
        name = self.prometheus_name()
        out = [f"# TYPE {name} histogram"]
        with self.lock:
            for values, (buckets, total) in sorted(self.cells.items()):
                labels = self._label_text(values)
                prefix = f"{name}_bucket{{{','.join(labels)}{',' if labels else ''}"
                cumulative = 0
                for i, count in enumerate(buckets):
                    cumulative += count
                    le = _six_digits(self.limits[i]) if i < len(self.limits) else "+Inf"
                    out.append(f'{prefix}le="{le}"}} {cumulative}')
                out.append(f"{name}_sum{{{','.join(labels)}}} {_six_digits(total)}")
                out.append(f"{name}_count{{{','.join(labels)}}} {cumulative}")
        return out


class Registry:
    """The process's metrics (``monitoring::CollectionRegistry::Default()``)."""

    def __init__(self) -> None:
        self.request_count = Counter("/tensorflow/serving/request_count", "model_name", "status")
        self.request_latency = Histogram(
            "/tensorflow/serving/request_latency",
            LATENCY_BUCKETS,
            "model_name",
            "API",
            "entrypoint",
        )
        self.runtime_latency = Histogram(
            "/tensorflow/serving/runtime_latency", LATENCY_BUCKETS, "model_name", "API", "runtime"
        )
        self.example_counts = Histogram(
            "/tensorflow/serving/request_example_counts", EXAMPLE_BUCKETS, "model"
        )
        self.example_count_total = Counter(
            "/tensorflow/serving/request_example_count_total", "model"
        )
        self.warmup_latency = Histogram(
            "/tensorflow/serving/model_warmup_latency", LATENCY_BUCKETS, "model_path", "status"
        )
        self.warmup_records = Counter(
            "/tensorflow/serving/model_warmup_records_read", "model_path", "status"
        )
        self.load_attempts = Counter(
            "/tensorflow/cc/saved_model/load_attempt_count", "model_path", "status"
        )
        self.load_latency = Counter("/tensorflow/cc/saved_model/load_latency", "model_path")

    def metrics(self) -> list[_Metric]:
        found = [m for m in vars(self).values() if isinstance(m, _Metric)]
        return sorted(found, key=lambda m: m.name)  # the registry's std::map order

    def page(self) -> str:
        """``PrometheusExporter::GeneratePage``."""
        lines: list[str] = []
        for metric in self.metrics():
            lines += metric.lines()
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
