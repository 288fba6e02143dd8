"""Reading a `/metrics` exposition in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(series: Series, name: str, /, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def total(series: Series, name: str, /, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and want <= ls)


def label_values(series: Series, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls), _ in series.items() if n == name and label in dict(ls)}
