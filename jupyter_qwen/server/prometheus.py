"""Reading the Prometheus text exposition format (what ``GET /metrics`` answers), torch-free.

`parse_prometheus` turns a page into `Metrics`: every sample by name, with its labels.
Families are summed over their label sets (a server with several engines or ranks reports
one series each), and histograms become cumulative buckets with a quantile estimate
interpolated the way Prometheus' ``histogram_quantile`` does. Lines that cannot be read are
skipped: one odd series never hides the others.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?"
                     r"\s+(?P<value>\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(slots=True)
class Histogram:
    """One histogram, summed over its label sets: cumulative counts by upper bound."""

    buckets: list[tuple[float, float]]  # (le, cumulative count), ascending, ends at +Inf
    count: float
    total: float

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since `earlier` (a scrape of the same histogram)."""
        before = dict(earlier.buckets)
        return Histogram([(le, count - before.get(le, 0.0)) for le, count in self.buckets],
                         self.count - earlier.count, self.total - earlier.total)

    def quantile(self, q: float) -> float | None:
        """The q-quantile, linear within its bucket (as Prometheus' histogram_quantile);
        None without observations. A quantile in the +Inf bucket is the highest finite
        bound."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank and count > lower_count:
                if math.isinf(bound):
                    return lower_bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count)
            lower_bound, lower_count = (bound if not math.isinf(bound) else lower_bound), count
        return lower_bound


@dataclass(slots=True)
class Metrics:
    """The samples of one /metrics page, by name."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.samples)

    def total(self, name: str) -> float | None:
        """The sum over label sets; None when the page has no such series."""
        found = self.samples.get(name)
        return None if not found else sum(s.value for s in found)

    def mean(self, name: str) -> float | None:
        """The mean over label sets (for fractions such as cache usage); None when absent."""
        found = self.samples.get(name)
        return None if not found else sum(s.value for s in found) / len(found)

    def histogram(self, name: str) -> Histogram | None:
        """The histogram ``name`` (from ``name_bucket``/``_count``/``_sum``), or None."""
        by_bound: dict[float, float] = defaultdict(float)
        for sample in self.samples.get(f"{name}_bucket", ()):
            try:
                by_bound[float(sample.labels["le"])] += sample.value
            except (KeyError, ValueError):
                continue
        if not by_bound:
            return None
        buckets = sorted(by_bound.items())
        count = self.total(f"{name}_count")
        return Histogram(buckets, buckets[-1][1] if count is None else count,
                         self.total(f"{name}_sum") or 0.0)


def parse_prometheus(text: str) -> Metrics:
    """All samples of a Prometheus text page; comments and unreadable lines are skipped."""
    samples: dict[str, list[Sample]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sample = _parse_sample(line)
        if sample is not None:
            samples[sample.name].append(sample)
    return Metrics(dict(samples))


def _parse_sample(line: str) -> Sample | None:
    match = _SAMPLE.match(line)
    if match is None:
        return None
    try:
        value = float(match["value"])
    except ValueError:
        return None
    labels = _parse_labels(match["labels"] or "")
    return None if labels is None else Sample(match["name"], labels, value)


def _parse_labels(text: str) -> dict[str, str] | None:
    labels, position = {}, 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            return None if text[position:].strip() else labels
        labels[match[1]] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m[0]], match[2])
        position = match.end()
    return labels
