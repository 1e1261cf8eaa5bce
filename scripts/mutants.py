"""Mutation testing of one module: which small breakages do the given tests not notice?

    .venv/bin/python scripts/mutants.py canbridge/safety.py tests/test_stop_model.py ...

Each mutant changes one thing in the module: a comparison (`<` for `<=`, `==` for `!=`), a
boolean operator, a `not` dropped, an arithmetic operator, a number or a boolean constant,
`min`/`max`, `floor`/`ceil` and `any`/`all` swapped, an `if` negated, or one statement of a
function removed. Log calls, docstrings and messages are left alone. For each mutant the
tests run (pytest `-x`: a caught mutant costs only its first failing test; one that makes
them run five times as long loops, and counts as caught). A mutant no test fails on is
printed with its line: a test to write, or a change nothing can observe.

The module is changed in place and restored at the end, even on Ctrl-C or `kill`: commit
or stash your edits to it first, and do not edit the tree while it runs. This is a tool for
people, not for CI: a module of 400 lines makes about 350 mutants, minutes to an hour of
tests.
"""

from __future__ import annotations

import argparse
import ast
import copy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})
COMPARISONS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt, ast.GtE), ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE), ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,)}
ARITHMETIC: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}
SWAPPED_NAMES = {"min": "max", "max": "min", "floor": "ceil", "ceil": "floor", "any": "all",
                 "all": "any"}
STATEMENTS = (ast.Assign, ast.AugAssign, ast.Expr, ast.Return)


class Mutant:
    """One change: the node at `index` in `ast.walk` order, and which change of it."""

    def __init__(self, index: int, node: ast.AST, variant: int):
        self.index = index
        self.variant = variant
        self.line = getattr(node, "lineno", 0)
        self.before = ast.unparse(node.test if isinstance(node, ast.If) else node)[:60]

    def apply(self, tree: ast.Module) -> tuple[ast.Module, str]:
        """A changed copy of `tree`, and what changed."""
        tree = copy.deepcopy(tree)
        node = list(ast.walk(tree))[self.index]
        variant = self.variant
        if isinstance(node, ast.Compare):
            position, choice = divmod(variant, 2)
            node.ops[position] = COMPARISONS[type(node.ops[position])][choice]()
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.UnaryOp):
            _replace(tree, node, node.operand)
            return tree, "`not` dropped"
        elif isinstance(node, ast.BinOp):
            node.op = ARITHMETIC[type(node.op)]()
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            node.value = not node.value
        elif isinstance(node, ast.Constant):
            node.value = _other_number(node.value, variant)
        elif isinstance(node, ast.Name):
            node.id = SWAPPED_NAMES[node.id]
        elif isinstance(node, ast.Attribute):
            node.attr = SWAPPED_NAMES[node.attr]
        elif isinstance(node, ast.If):
            node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
            return tree, "condition negated"
        else:
            _replace(tree, node, ast.Pass())
            return tree, "statement removed"
        return tree, ast.unparse(node)[:60]


def _other_number(value: int | float, variant: int) -> int | float:
    if variant == 0:
        return value + 1 if isinstance(value, int) else value * 1.5 + 0.1
    return (-1 if isinstance(value, int) else -1.0) if value == 0 else type(value)(0)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list) and any(item is old for item in value):
                value[[id(item) for item in value].index(id(old))] = new
                return


def _left_alone(node: ast.AST) -> ast.AST | None:
    """The part of `node` no mutant touches: a log call, a docstring or f-string, what an
    exception is raised with."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in LOG_METHODS):
        return node
    if isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)):
        return node
    return node.exc if isinstance(node, ast.Raise) else None


def _variants(node: ast.AST, in_function: bool) -> list[int]:
    """The changes `Mutant.apply` can make to `node`, by number."""
    if isinstance(node, ast.Compare):
        return [2 * position + choice for position, op in enumerate(node.ops)
                for choice in range(len(COMPARISONS.get(type(op), ())))]
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return [0, 1]
    changeable = (
        isinstance(node, ast.BoolOp | ast.If)
        or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not))
        or (isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC)
        or (isinstance(node, ast.Constant) and isinstance(node.value, bool))
        or (isinstance(node, ast.Name) and node.id in SWAPPED_NAMES
            and isinstance(node.ctx, ast.Load))
        or (isinstance(node, ast.Attribute) and node.attr in SWAPPED_NAMES)
        or (isinstance(node, STATEMENTS) and in_function))
    return [0] if changeable else []


def mutants(tree: ast.Module) -> Iterator[Mutant]:
    skip = {id(inner) for node in ast.walk(tree) if (zone := _left_alone(node)) is not None
            for inner in ast.walk(zone)}
    in_function = {id(inner) for function in ast.walk(tree)
                   if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
                   for inner in ast.walk(function)}
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or (isinstance(node, ast.Expr) and id(node.value) in skip):
            continue
        for variant in _variants(node, id(node) in in_function):
            yield Mutant(index, node, variant)


def run_tests(tests: list[str], timeout: float | None = None) -> bool:
    """True when the tests pass; a run past `timeout` (a mutant that loops) counts as failed."""
    command = [sys.executable, "-B", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               *tests]
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", type=Path, help="the Python file to mutate")
    parser.add_argument("tests", nargs="+", help="pytest arguments: the tests that guard it")
    args = parser.parse_args()
    module: Path = args.module.resolve()
    original = module.read_text()
    tree = ast.parse(original)
    found = list(mutants(tree))
    started = time.monotonic()
    if not run_tests(args.tests):
        print("the tests fail on the unchanged module: fix them first", file=sys.stderr)
        return 2
    timeout = 5 * (time.monotonic() - started) + 30
    print(f"{len(found)} mutants of {args.module}", flush=True)
    survivors = 0
    # A background job ignores Ctrl-C: `kill` it, and the module is still restored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for mutant in found:
            changed, after = mutant.apply(tree)
            module.write_text(ast.unparse(changed))
            for stale in module.parent.glob(f"__pycache__/{module.stem}.*.pyc"):
                stale.unlink()
            if run_tests(args.tests, timeout):
                survivors += 1
                print(f"line {mutant.line}: {mutant.before}  ->  {after}", flush=True)
    finally:
        module.write_text(original)
    print(f"{survivors} of {len(found)} survived ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
