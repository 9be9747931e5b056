"""Write the chart's README.md from Chart.yaml and the comments of values.yaml.

In the manner of helm-docs: every key of values.yaml is documented by the comment
block above it, whose first line starts with ``# --``; the README lists each key with
its type, its default and that text, so what an ``artifacthub.io`` page or ``helm
show readme`` shows can never drift from the values. Maps whose keys are documented
one by one are listed key by key; others (labels, resources, contexts) as a whole.

    .venv/bin/python hack/chart_readme.py           # rewrite charts/.../README.md
    .venv/bin/python hack/chart_readme.py --check   # exit 1 if it is out of date

tests/unit/test_chart.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "mailtrap-webhook-operator"
README = CHART / "README.md"


def comment_above(lines: list[str], line: int) -> str:
    """The ``# --`` comment block that ends right above ``line`` (0-based), as text."""
    block: list[str] = []
    index = line - 1
    while index >= 0 and lines[index].strip().startswith("#"):
        block.insert(0, lines[index].strip()[1:].strip())
        if block[0].startswith("--"):
            block[0] = block[0][2:].strip()
            return " ".join(part for part in block if part)
        index -= 1
    return ""


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def cell(text: str) -> str:
    """Text for a Markdown table cell: no pipes, no angle brackets read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def shown(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return "`" + text.replace("|", "\\|") + "`"


def rows(
    node: yaml.MappingNode, data: dict[str, Any], lines: list[str], path: str
) -> Iterator[tuple[str, str, str, str]]:
    for key_node, value_node in node.value:
        key = key_node.value
        value = data[key]
        where = f"{path}{key}"
        documented_children = isinstance(value_node, yaml.MappingNode) and any(
            comment_above(lines, child.start_mark.line) for child, _ in value_node.value
        )
        if documented_children:
            text = comment_above(lines, key_node.start_mark.line)
            if text:
                yield where, "object", "", text
            yield from rows(value_node, value, lines, where + ".")
        else:
            yield where, kind(value), shown(value), comment_above(lines, key_node.start_mark.line)


def render() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise SystemExit("values.yaml is not a mapping")
    table = [
        "| Key | Type | Default | Description |",
        "|-----|------|---------|-------------|",
        *(
            f"| `{key}` | {type_} | {default} | {cell(description)} |"
            for key, type_, default, description in rows(root, yaml.safe_load(text), lines, "")
        ),
    ]
    return "\n".join(
        [
            f"# {chart['name']}",
            "",
            "<!-- Written by hack/chart_readme.py from Chart.yaml and values.yaml: edit those. -->",
            "",
            f"![Version: {chart['version']}](https://img.shields.io/badge/Version-"
            f"{chart['version']}-informational) ![AppVersion: {chart['appVersion']}]"
            f"(https://img.shields.io/badge/AppVersion-{chart['appVersion']}-informational)",
            "",
            " ".join(str(chart["description"]).split()),
            "",
            f"Kubernetes `{chart['kubeVersion']}`. The project's README covers installing,"
            " the MailtrapWebhook resource and the operator's permissions; this page lists"
            " the chart's values.",
            "",
            "```sh",
            f"helm install {chart['name']} oci://REGISTRY/charts/{chart['name']} \\",
            f"  --version {chart['version']} --namespace mailtrap-system --create-namespace",
            "```",
            "",
            "## Values",
            "",
            *table,
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args()
    wanted = render()
    if args.check:
        if not README.exists() or README.read_text() != wanted:
            print(
                f"{README.relative_to(CHART.parents[1])} is out of date: run "
                "`.venv/bin/python hack/chart_readme.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
