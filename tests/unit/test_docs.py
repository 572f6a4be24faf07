"""The docs stay true as the code changes: every setting the server reads is documented (and in
--help), every tool is in the tools page, the README stays short, and links go somewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mcp_container_sandbox import settings
from mcp_container_sandbox.cli import settings_help
from mcp_container_sandbox.tools import tool_names

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_BYTES = 12 * 1024


def variables_read() -> set[str]:
    """The environment variables settings.py reads: every upper-case name in its code, outside
    the VARIABLES table that describes them."""
    tree = ast.parse(Path(settings.__file__).read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "VARIABLES":
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                found |= set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|\b(?:HOST|PORT|PODMAN|KUBECONFIG)\b", inner.value))
    return found


def test_every_variable_read_is_described_in_the_settings_table() -> None:
    described = {name for name, _, _ in settings.VARIABLES}
    assert len(variables_read()) >= 40
    assert variables_read() <= described, sorted(variables_read() - described)
    assert described <= variables_read(), sorted(described - variables_read())


def test_every_variable_is_in_the_configuration_page_and_in_help() -> None:
    page = (DOCS / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", page, re.MULTILINE))
    names = {name for name, _, _ in settings.VARIABLES}
    assert names <= rows, sorted(names - rows)
    shown = settings_help()
    assert all(f"  {name} " in shown for name in names)


def test_every_tool_is_in_the_tools_page_and_the_readme() -> None:
    page = (DOCS / "tools.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in tool_names():
        assert f"| `{name}` |" in page, name
        assert f"| `{name}` |" in readme, name


def test_the_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; details belong in docs/"


def test_links_between_the_docs_go_to_files_that_exist() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    assert len(pages) >= 9
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"
