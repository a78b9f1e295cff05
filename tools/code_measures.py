"""The structure figures of the code, against the targets the project keeps (issue 24):

    python tools/code_measures.py          # print the figures; exit 1 when a target is missed

- no module under src/ over MODULE_LINES lines;
- no function (or method) in src/ or stages/ over FUNCTION_LINES lines;
- stages/train.py and stages/evaluate.py each under STAGE_LINES lines.

Lines are physical lines, docstrings and comments included, as `wc -l` counts them; a function's
lines run from its `def` (decorators included) to its last line. Only the standard library.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_LINES = 450
FUNCTION_LINES = 80
STAGE_LINES = 60
THIN_STAGES = ("stages/train.py", "stages/evaluate.py")


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def functions(path: Path) -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function and method in a file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                yield f"{prefix}{child.name}", child.end_lineno - first + 1
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")

    yield from visit(tree, "")


def python_files(folder: str) -> list[Path]:
    return sorted(
        path for path in (REPO_ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts
    )


def measure(top: int = 8) -> tuple[list[str], list[str]]:
    """The report's lines and the targets missed."""
    modules = sorted(
        (
            (line_count(path), path.relative_to(REPO_ROOT).as_posix())
            for path in python_files("src")
        ),
        reverse=True,
    )
    every_function = sorted(
        (
            (lines, f"{path.relative_to(REPO_ROOT).as_posix()}:{name}")
            for folder in ("src", "stages")
            for path in python_files(folder)
            for name, lines in functions(path)
        ),
        reverse=True,
    )
    stages = [(line_count(REPO_ROOT / name), name) for name in THIN_STAGES]
    report = [f"largest modules under src/ (target: none over {MODULE_LINES} lines):"]
    report += [f"  {lines:5d}  {name}" for lines, name in modules[:top]]
    report += [f"longest functions in src/ and stages/ (target: none over {FUNCTION_LINES}):"]
    report += [f"  {lines:5d}  {name}" for lines, name in every_function[:top]]
    report += [f"thin stages (target: each under {STAGE_LINES} lines):"]
    report += [f"  {lines:5d}  {name}" for lines, name in stages]
    missed = [f"{name}: {lines} lines" for lines, name in modules if lines > MODULE_LINES]
    missed += [f"{name}: {lines} lines" for lines, name in every_function if lines > FUNCTION_LINES]
    missed += [f"{name}: {lines} lines" for lines, name in stages if lines >= STAGE_LINES]
    return report, missed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8, help="rows per table")
    arguments = parser.parse_args(argv)
    report, missed = measure(arguments.top)
    print("\n".join(report))
    if missed:
        print(f"targets missed ({len(missed)}):")
        print("\n".join(f"  {line}" for line in missed))
        return 1
    print("every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
