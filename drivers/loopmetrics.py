"""Counters and histograms an event loop updates with one dict or list operation.

prometheus_client's own ``labels(...).inc()`` takes 3 to 20 microseconds a call (label
validation, a lock, a child lookup; the slow end is a cold cache between loop turns).
The daemon's loop makes several such calls per command and per exposure, which measured
about 3 % of its CPU in a rehearsal. Here an update is a dict lookup and an addition, and
the families are built only when Prometheus scrapes, on the HTTP server's thread, by
:func:`families` from a collector.

Reading from another thread is safe without a lock: copying a dict or a list is one
C-level operation under the GIL. A histogram's sum can trail its buckets by the one
observation being made; its count is derived from the buckets, so ``_count`` always
equals the ``+Inf`` bucket.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class LoopCounter:
    """A counter family: label values -> count. ``preset`` series exist from the start."""

    __slots__ = ("doc", "labelnames", "name", "values")

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...] = (),
                 preset=()):
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self.values: dict[tuple, float] = {}
        for labels in (preset if labelnames else [()]):
            self.values[tuple(labels) if labelnames else ()] = 0.0

    def inc(self, *labels: str, n: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + n

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def family(self):
        f = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, v in list(self.values.items()):
            f.add_metric(list(labels), v)
        return f


class LoopHistogram:
    """A histogram family: label values -> per-bucket counts and a sum."""

    __slots__ = ("_les", "bounds", "doc", "labelnames", "name", "series")

    def __init__(self, name: str, doc: str, buckets, labelnames: tuple[str, ...] = ()):
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._les = [_le(b) for b in self.bounds] + ["+Inf"]
        # counts per bucket (not cumulative; the last is above every bound), then the sum
        self.series: dict[tuple, list[float]] = {}
        if not labelnames:
            self.series[()] = [0.0] * (len(self.bounds) + 2)

    def observe(self, value: float, *labels: str) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, value)] += 1
        s[-1] += value

    def count(self, *labels: str) -> int:
        s = self.series.get(labels)
        return int(sum(s[:-1])) if s else 0

    def family(self):
        f = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, s in list(self.series.items()):
            s = list(s)
            cum, buckets = 0.0, []
            for le, n in zip(self._les, s[:-1], strict=True):
                cum += n
                buckets.append((le, cum))
            f.add_metric(list(labels), buckets, s[-1])
        return f


def _le(bound: float) -> str:
    return floatToGoString(bound)


class LoopCollector:
    """A prometheus_client collector: ``extra()``'s families, then the loop metrics'."""

    def __init__(self, metrics, extra=None):
        self.metrics, self.extra = list(metrics), extra

    def describe(self):
        return []  # read at collect time only

    def collect(self):
        if self.extra is not None:  # first: it may bring the loop metrics up to date
            yield from self.extra()
        for m in self.metrics:
            yield m.family()


# The text exposition ----------------------------------------------------------------
# prometheus_client's generate_latest validates and escapes every name of every sample
# (about 15 us a sample; a scrape here has ~350). The names are ours and valid by
# construction (tests/test_ops.py checks them), so this writes the same text format
# (0.0.4) with only the label values escaped: several times faster.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ESCAPE = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})
_INF, _NINF = float("inf"), float("-inf")


def _value(v) -> str:
    v = float(v)
    if v != v:
        return "NaN"
    if v == _INF:
        return "+Inf"
    if v == _NINF:
        return "-Inf"
    return repr(v)


def encode_text(registry) -> bytes:
    """The registry in Prometheus' text format, version 0.0.4."""
    out = []
    for fam in registry.collect():
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        mtype = fam.type if fam.type in ("counter", "gauge", "histogram", "summary") \
            else "untyped"
        doc = fam.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
        for s in fam.samples:
            if s.name.endswith("_created"):  # OpenMetrics only
                continue
            if s.labels:
                labels = ",".join(f'{k}="{str(v).translate(_ESCAPE)}"'
                                  for k, v in s.labels.items())
                out.append(f"{s.name}{{{labels}}} {_value(s.value)}\n")
            else:
                out.append(f"{s.name} {_value(s.value)}\n")
    return "".join(out).encode()


def wsgi_app(registry):
    """/metrics (and /) in the text format; 404 elsewhere."""
    def app(environ, start_response):
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        body = encode_text(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app
