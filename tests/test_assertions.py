"""The suite's own rule: no assertion bounds a metric by what any number between 0 and 1 meets.

``assert 0 <= iou <= 1`` or ``assert dice >= 0`` passes for a model that learned nothing, or for a
metric that is never computed. A metric assertion states a bound a broken model cannot meet, a
known answer, or a relation between two measured numbers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
METRIC_WORDS = ("iou", "dice", "map", "acc", "precision", "recall", "agreement", "score", "share")
# Honest exceptions, each with its reason: "path:line-text fragment" -> why.
ALLOWED: dict[str, str] = {}


def _constant(node: ast.AST) -> float | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) else None


def _names_a_metric(node: ast.AST) -> bool:
    text = ast.unparse(node).lower()
    return any(word in text for word in METRIC_WORDS)


def _vacuous(compare: ast.Compare) -> bool:
    """``0 <= x <= 1`` (either direction, strict or not), ``x >= 0``, ``0 <= x``, ``x <= 1``."""
    operands = [compare.left, *compare.comparators]
    values = [_constant(o) for o in operands]
    ops = compare.ops
    if len(operands) == 3 and values[0] in (0, 0.0) and values[2] in (1, 1.0) and values[1] is None:
        return all(isinstance(op, (ast.Lt, ast.LtE)) for op in ops) and _names_a_metric(operands[1])
    if len(operands) == 2 and (values[0] is None) != (values[1] is None):
        metric, const = (operands[0], values[1]) if values[0] is None else (operands[1], values[0])
        op = ops[0] if values[0] is None else {ast.LtE: ast.GtE(), ast.Lt: ast.Gt(), ast.GtE: ast.LtE(),
                                               ast.Gt: ast.Lt()}.get(type(ops[0]), ops[0])
        floor = const in (0, 0.0) and isinstance(op, ast.GtE)
        ceiling = const in (1, 1.0) and isinstance(op, ast.LtE)
        return (floor or ceiling) and _names_a_metric(metric)
    return False


def vacuous_metric_bounds(source: str) -> list[tuple[int, str]]:
    """(line, code) of every assertion part that only bounds a metric to [0, 1]."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            parts = node.test.values if isinstance(node.test, ast.BoolOp) else [node.test]
            for part in parts:
                if isinstance(part, ast.Compare) and _vacuous(part):
                    found.append((node.lineno, ast.unparse(part)))
    return found


def test_the_rule_catches_what_it_is_for():
    caught = vacuous_metric_bounds("assert 0 <= iou <= 1\nassert r['dice'] >= 0 and n == 3\n"
                                   "assert 1.0 >= summary['val_iou']\nassert 0.0 < m.map_50 <= 1.0\n")
    assert [line for line, _ in caught] == [1, 2, 3, 4]
    kept = vacuous_metric_bounds("assert iou > 0.3\nassert 0 <= n_images <= 1\nassert abs(iou - 0.5) < 1e-6\n"
                                 "assert dice >= iou\nassert loss >= 0\n")
    assert kept == []


def test_no_metric_is_bounded_only_by_zero_and_one():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel == "test_assertions.py":
            continue
        for line, code in vacuous_metric_bounds(path.read_text(encoding="utf-8")):
            if not any(key.startswith(rel + ":") and key.split(":", 1)[1] in code for key in ALLOWED):
                offenders.append(f"tests/{rel}:{line}: {code}")
    assert not offenders, "metric bounds any number meets (state a bound a broken model misses):\n" + "\n".join(offenders)
