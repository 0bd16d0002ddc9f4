"""Rules about the test suite itself, checked so that a broken rule fails CI rather than a reviewer's eye.

Tests must pass on any machine: a test that asserts a wall time fails on a slower host (one did, at 210 s
against a 120 s limit on a 2-core machine). Timings belong in ``benchmarks/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
TIME_WORDS = ("time", "timing", "elapsed", "seconds", "wall", "duration", "perf_counter", "monotonic")


def _timing_asserts(source: str) -> list[int]:
    """Line numbers of ``assert`` statements that order-compare something named like a time."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            if not any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in cmp.ops):
                continue
            operands = [cmp.left, *cmp.comparators]
            if any(isinstance(o, ast.Constant) and o.value == 0 for o in operands):
                continue  # a sign check (a timing is non-negative) bounds nothing about the host
            text = ast.unparse(cmp).lower()
            if any(w in text for w in TIME_WORDS):
                found.append(node.lineno)
    return found


# conditions a timing assert would test (kept out of assert lines, so text searches for such asserts stay quiet)
BOUNDED_TOTAL = "results['timings_s']['total'] < 120"
BOUNDED_CLOCK = "time.perf_counter() - t0 <= 5"


def test_the_rule_catches_a_timing_assert() -> None:
    assert _timing_asserts(f"assert {BOUNDED_TOTAL}\n") == [1]
    assert _timing_asserts(f"assert {BOUNDED_CLOCK}\n") == [1]
    assert _timing_asserts("assert all(t >= 0 for t in timings)\n") == []


def test_no_test_asserts_a_wall_time() -> None:
    offenders = {
        f"{path.name}:{line}": None
        for path in sorted(TESTS.glob("test_*.py"))
        if path.name != Path(__file__).name
        for line in _timing_asserts(path.read_text())
    }
    assert not offenders, f"timing assertions in tests (move them to benchmarks/): {sorted(offenders)}"
