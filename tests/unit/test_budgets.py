"""Budgets a newcomer can hold in mind, held by a test: no product module over 500 lines, no class
over 300, no function over 60. The C agent, tests and benchmarks are not product modules here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = sorted([*(ROOT / "mcp_container_sandbox").rglob("*.py"), ROOT / "server.py"])
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 500, 300, 60


def over_budget(path: Path) -> list[str]:
    """What in this file is over its budget, each as 'file:line name: N lines (budget B)'."""
    source = path.read_text()
    where = path.relative_to(ROOT)
    found = []
    lines = source.count("\n")
    if lines > MODULE_LINES:
        found.append(f"{where}: {lines} lines (budget {MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            budget = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
            if size > budget:
                found.append(f"{where}:{node.lineno} {node.name}: {size} lines (budget {budget})")
    return found


def test_the_product_is_found() -> None:
    assert len(PRODUCT) > 30 and ROOT / "mcp_container_sandbox" / "sandbox" / "manager.py" in PRODUCT


def test_no_product_module_class_or_function_is_over_its_budget() -> None:
    offenders = [line for path in PRODUCT for line in over_budget(path)]
    assert not offenders, "over budget; split along a seam a newcomer would guess:\n" + "\n".join(offenders)


def test_the_budget_check_names_an_offender(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    sample = ROOT / ".pytest_cache" / "budget_sample.py"
    sample.parent.mkdir(exist_ok=True)
    sample.write_text(f"def long_one():\n{body}\n")
    try:
        assert over_budget(sample) == [f".pytest_cache/budget_sample.py:1 long_one: {FUNCTION_LINES + 1} lines (budget {FUNCTION_LINES})"]
    finally:
        sample.unlink()
