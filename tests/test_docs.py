"""The README and docs/ name only config keys and make targets that exist: a renamed key or target
would otherwise leave users typing something the workflow refuses."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "config.yaml", *sorted((REPO / "docs").glob("*.md"))]
FILE_SUFFIXES = ("json", "joblib", "csv", "parquet", "pt", "tsv", "log", "html", "yaml")


def named_in_docs(pattern: str) -> dict[str, str]:
    """Each match of ``pattern``'s group in the docs, with the first file that names it."""
    named: dict[str, str] = {}
    for doc in DOCS:
        for match in re.findall(pattern, doc.read_text()):
            named.setdefault(match, doc.name)
    return named


def schema_has(schema: dict, keys: list[str]) -> bool:
    """Whether the schema declares the nested config key (a mapping of free keys accepts any)."""
    node = schema
    for key in keys:
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif node.get("additionalProperties") or node.get("patternProperties"):
            node = {}
        else:
            return False
    return True


def test_every_config_key_the_docs_name_is_in_the_schema():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    named = {key: doc for key, doc in named_in_docs(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)+)").items()
             if key.split(".")[0] in config and key.split(".")[-1] not in FILE_SUFFIXES}
    assert len(named) > 20, "the scan found too few keys: the pattern no longer matches the docs"
    missing = {key: doc for key, doc in named.items() if not schema_has(schema, key.split("."))}
    assert not missing, f"config keys named in the docs but not in the schema: {missing}"


def test_every_make_target_the_docs_name_is_in_the_makefile():
    makefile = (REPO / "Makefile").read_text()
    targets = re.findall(r"^([a-z-]+)(%?):", makefile, flags=re.MULTILINE)
    exact = {name for name, pattern in targets if not pattern}
    prefixes = tuple(name for name, pattern in targets if pattern)
    named = named_in_docs(r"`make (?:-j\d+ )?([a-z][a-z0-9_-]*)")
    assert {"run", "test", "bench"} <= set(named), "the scan no longer finds the README's make commands"
    missing = {target: doc for target, doc in named.items()
               if target not in exact and not target.startswith(prefixes)}
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"


def test_the_rule_graph_in_the_docs_is_the_workflows():
    """docs/rulegraph.svg, shown in the README as what `make dag` draws, had lost two of the edges a
    rule added since (the train jobs into the feature contribution)."""
    import subprocess
    import sys

    dot = subprocess.run([sys.executable, "-m", "snakemake", "--rulegraph", "--workflow-profile", "profiles/default"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, flags=re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}
    svg = (REPO / "docs" / "rulegraph.svg").read_text()
    drawn_labels = dict(re.findall(r'<title>(\d+)</title>\n<path[^\n]*\n<text[^>]*>(\w+)</text>', svg))
    drawn = {(drawn_labels[a], drawn_labels[b]) for a, b in re.findall(r"<title>(\d+)&#45;&gt;(\d+)</title>", svg)}
    assert len(edges) > 40 and drawn == edges, "run `make dag`: " + str(edges ^ drawn)
