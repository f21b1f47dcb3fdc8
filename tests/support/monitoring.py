"""The monitoring component's rules and Grafana board, read as Prometheus and Grafana read them.

For the component's own tests (tests/deploy/test_monitoring.py) and for the end-to-end check
against a real Prometheus scraping the running mesh:

- `write_rules_file(folder)`: the PrometheusRule's `spec.groups` as a Prometheus rule file, the
  file `promtool check rules` checks and a real Prometheus loads (`rule_files:` in its config).
- `metric_names_used()`: every series a rule or a board panel reads, by the name PromQL gives it,
  which is the name of its samples in a scrape: counters with `_total`, histograms as
  `_bucket`, `_count` or `_sum`. Left out: the series the rules record themselves (a
  Prometheus that loaded the rules makes them) and those Prometheus makes for each target (`up`).
- `promtool()`: Debian's promtool (`make promtool`), or a skip naming how to install it, which is
  a failure in CI.

The component's files are the source: deploy/k8s/components/monitoring/prometheusrule.yaml (as
kustomize passes it through: it rewrites no rule) and dashboards/kokoro-pay.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO_ROOT

COMPONENT = REPO_ROOT / "deploy" / "k8s" / "components" / "monitoring"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"
DASHBOARD = COMPONENT / "dashboards" / "kokoro-pay.json"
RULES_FILE_NAME = "kokoropay-rules.yaml"

# Series Prometheus writes itself, for every target or every alert: never in a scrape.
PROMETHEUS_OWN = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)
# What the board's expressions say in Grafana's variables, as Prometheus would get it: Grafana
# substitutes them before it sends a query. A variable not listed here is a mistake in the board.
GRAFANA_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "6h",
    "namespace": "kokoropay",
}

Rule = dict[str, Any]


def rule_groups() -> list[dict[str, Any]]:
    """The PrometheusRule's rule groups, as the Operator hands them to Prometheus."""
    document = yaml.safe_load(PROMETHEUS_RULE.read_text())
    groups: list[dict[str, Any]] = document["spec"]["groups"]
    return groups


def rules() -> list[Rule]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def write_rules_file(folder: Path, *, annotations: bool = True) -> Path:
    """Write the rules as a Prometheus rule file in `folder`; its path.

    Without `annotations`, for `promtool test rules`: it compares every annotation of a firing
    alert, rendered, so tests of when an alert fires would otherwise restate its wording.
    """
    groups = rule_groups()
    if not annotations:
        groups = [
            {
                **group,
                "rules": [
                    {key: value for key, value in rule.items() if key != "annotations"}
                    for rule in group["rules"]
                ],
            }
            for group in groups
        ]
    path = folder / RULES_FILE_NAME
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panel_expressions() -> dict[str, str]:
    """`<panel title> / <refId>` → the query, with Grafana's variables as written."""
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    }


def rule_expressions() -> dict[str, str]:
    """The alert's or recorded series' name → its expression."""
    return {rule.get("alert") or rule["record"]: str(rule["expr"]) for rule in rules()}


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def prometheus_expression(expression: str) -> str:
    """A board query as Grafana sends it to Prometheus, its variables replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise ValueError(f"unknown Grafana variable ${name} in {expression!r}")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expression)


# PromQL, as far as names go: strings, ranges and numbers (durations included) say nothing about
# series; a name followed by `(` is a function or an aggregation; `{…}` holds label matchers;
# by/without/on/ignoring/group_left/group_right take a list of label names.
_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>[0-9.][0-9a-zA-Z_.]*)
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<variable>\$\{?\w+\}?)
    | (?P<other>=~|!~|!=|==|>=|<=|[-+*/%^<>=!{}(),@])
    """,
    re.VERBOSE,
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LISTS | {"bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"}
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            raise ValueError(f"cannot read {expression[position:]!r} in {expression!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _skip_past(tokens: list[tuple[str, str]], start: int, closing: str) -> int:
    """The index after the first `closing` token at or after `start`."""
    for index in range(start, len(tokens)):
        if tokens[index] == ("other", closing):
            return index + 1
    raise ValueError(f"no {closing!r} after token {start}")


def metric_names(expression: str) -> set[str]:
    """The series names one PromQL expression selects (`{__name__=…}` selectors aside)."""
    tokens = _tokens(expression)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if (kind, text) == ("other", "{"):
            index = _skip_past(tokens, index, "}")
            continue
        if kind == "name":
            word = text.lower()
            if word in _LABEL_LISTS and following == ("other", "("):
                index = _skip_past(tokens, index, ")")
                continue
            is_call = following == ("other", "(")
            is_aggregation = word in _AGGREGATIONS and following[1].lower() in ("by", "without")
            if not (word in _KEYWORDS or is_call or is_aggregation):
                names.add(text)
        index += 1
    return names


def metric_names_used() -> set[str]:
    """Every scraped series the rules and the board's panels read (see the module's docstring)."""
    expressions = [*rule_expressions().values(), *panel_expressions().values()]
    used = set().union(*(metric_names(expression) for expression in expressions))
    return used - recorded_names() - PROMETHEUS_OWN


def promtool() -> str:
    """Debian's promtool, or a skip (a failure in CI) naming the command that installs it."""
    return _debian_prometheus_tool("promtool", "the alert rules' checks")


def prometheus_binary() -> str:
    """Debian's prometheus server (same package as promtool), or a skip (a failure in CI)."""
    return _debian_prometheus_tool("prometheus", "the scrape of the running mesh")


def _debian_prometheus_tool(name: str, needed_for: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    message = f"no {name} for {needed_for}: run `make promtool` (apt-get install prometheus)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
