"""Reading metrics as Prometheus would: the exposition text, parsed by prometheus_client's parser.

Metrics live in the process's default registry and only grow, so tests compare two scrapes:
`after.delta(before, name, **labels)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Exposition:
    """Every sample of one scrape, by sample name and labels."""

    samples: dict[SampleKey, float]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return cls(samples)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0: none)."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= sample_labels
        )

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(
            sample == name and wanted <= sample_labels for sample, sample_labels in self.samples
        )

    def delta(self, before: Exposition, name: str, **labels: str) -> float:
        return self.total(name, **labels) - before.total(name, **labels)

    def label_values(self, label: str) -> set[str]:
        """Every value `label` takes in this scrape, across all metrics."""
        return {value for _, labels in self.samples for key, value in labels if key == label}


def scrape() -> Exposition:
    """The process's default registry, as its /metrics port would serve it."""
    return Exposition.parse(generate_latest(REGISTRY).decode())
