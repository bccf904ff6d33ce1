"""The shape of the code: no function of samdetr_ops/, models/ or benchmarks/ is longer than 80 lines (a longer one
is a sequence of steps that wants names of its own)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("samdetr_ops", "models", "benchmarks")
MAX_FUNCTION_LINES = 80


def long_functions(source, path, limit=MAX_FUNCTION_LINES):
    """["path:line name (n lines)"] of every function (nested ones too) of `source` longer than `limit` lines,
    counted from its first decorator to its last line, docstring and comments included."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            length = node.end_lineno - first + 1
            if length > limit:
                found.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_checker_finds_a_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    indented = body.replace("    ", "        ")
    source = f"class A:\n    @staticmethod\n    def short():\n        pass\n\n    def long():\n{indented}"
    assert long_functions(source, "a.py") == [f"a.py:6 long ({MAX_FUNCTION_LINES + 1} lines)"]
    assert long_functions(f"def fits():\n{''.join(body.splitlines(True)[1:])}", "b.py") == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_80_lines(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    found = [entry for path in files
             for entry in long_functions(path.read_text(), path.relative_to(ROOT))]
    assert not found, "functions over 80 lines:\n  " + "\n  ".join(found)
