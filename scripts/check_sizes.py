#!/usr/bin/env python3
"""Size rules of src/ (docs/architecture.md), run by .ci/run:

    no file over 400 lines, no function over 60 lines (from ``def`` to its last line,
    its docstring not counted),
    no block of 6+ identical lines (stripped, blank lines skipped) in two places.

Exceptions are listed in ALLOWED below, each with its reason. Exit 1 and one line per
violation otherwise. Standard library only.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "nexus_optim"
MAX_FILE, MAX_FUNCTION, MIN_BLOCK = 400, 60, 6
# path (relative to src/nexus_optim) -> why its repeated blocks are allowed
ALLOWED = {
}
# "path:function" -> why it may be longer than MAX_FUNCTION (to be split; see docs/architecture.md)
LONG_FUNCTIONS: dict[str, str] = {
}


def file_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def long_functions(path: Path, tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = node.lineno
            n = node.end_lineno - start + 1
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                n -= body[0].end_lineno - body[0].lineno + 1
            if n > MAX_FUNCTION and f"{path.relative_to('src/nexus_optim')}:{node.name}" not in LONG_FUNCTIONS:
                out.append(f"{path}:{start}: function {node.name} has {n} lines (max {MAX_FUNCTION})")
    return out


def _code_lines(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that are code: blank lines, comments and
    docstrings left out."""
    doc = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    out = []
    for i, line in enumerate(file_lines(path), 1):
        s = line.strip()
        if s and not s.startswith("#") and i not in doc:
            out.append((i, s))
    return out


def repeated_blocks(files: dict[Path, list[tuple[int, str]]]) -> list[str]:
    seen: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    for path, lines in files.items():
        for k in range(len(lines) - MIN_BLOCK + 1):
            window = tuple(s for _, s in lines[k:k + MIN_BLOCK])
            if sum(len(s) for s in window) < 120:  # closing brackets, bare keywords
                continue
            seen[window].append((path, lines[k][0]))
    out, reported = [], set()
    for window, places in seen.items():
        if len(places) < 2:
            continue
        key = tuple(sorted({str(p) for p, _ in places}))
        first = places[0]
        if (key, first[0]) in reported:
            continue
        reported.add((key, first[0]))
        where = ", ".join(f"{p}:{n}" for p, n in places[:4])
        out.append(f"repeated block of {MIN_BLOCK}+ lines: {where}")
    return out


def main() -> int:
    problems = []
    code: dict[Path, list[tuple[int, str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent.parent)
        n = len(file_lines(path))
        if n > MAX_FILE:
            problems.append(f"{rel}: {n} lines (max {MAX_FILE})")
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        problems += long_functions(rel, tree)
        if str(path.relative_to(ROOT)) not in ALLOWED:
            code[rel] = _code_lines(path, tree)
    problems += repeated_blocks(code)
    for p in problems:
        print(p)
    print(f"check_sizes: {len(problems)} problem(s) in {ROOT.relative_to(ROOT.parent.parent)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
