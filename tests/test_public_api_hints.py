"""Every public function and method of the package has type hints on its parameters and return.

Public: a module-level function or class of a module whose path has no part starting with "_"
(`__init__.py` counts as its package), whose name does not start with "_"; and every method of a
public class whose name does not start with "_", plus `__init__` and `__call__`. `self` / `cls` of
methods (not of static methods) need no hint; `*args` / `**kwargs` do. The check reads the source
(no import: the scripts' absl flags cannot be defined twice in one process); that the hinted
names exist is ruff's F821 (`ruff check .` in CI).
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_ebm")
PUBLIC_DUNDERS = ("__init__", "__call__")

# "<module path>:<Class.method or function>" -> why a hint would be wrong or impossible there.
# Empty: every public name is annotated. Add an entry only with its reason.
ALLOWED_WITHOUT_HINTS = {}


def _is_public(name):
    return not name.startswith("_") or name in PUBLIC_DUNDERS


def _modules():
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(files):
            if name.endswith(".py") and (name == "__init__.py" or not name.startswith("_")):
                yield os.path.join(folder, name)


def _public_functions(tree):
    """`(qualified name, function node, is a method)` of the public functions and methods."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(item.name):
                    yield f"{node.name}.{item.name}", item, True


def missing_hints(fn, is_method):
    """Names of the parameters of `fn` without a hint, plus "return" when it has no return hint."""
    args = fn.args
    params = args.posonlyargs + args.args + args.kwonlyargs
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if is_method and not static and (args.posonlyargs + args.args)[:1]:
        first = (args.posonlyargs + args.args)[0]
        params = [p for p in params if p is not first]
    missing = [p.arg for p in params if p.annotation is None]
    if fn.returns is None:
        missing.append("return")
    return missing


def unannotated(source, module="<module>"):
    """`["module:qualname (names)"]` of the public functions of `source` that lack hints."""
    out = []
    for qualname, fn, is_method in _public_functions(ast.parse(source)):
        missing = missing_hints(fn, is_method)
        key = f"{module}:{qualname}"
        if missing and key not in ALLOWED_WITHOUT_HINTS:
            out.append(f"{key} ({', '.join(missing)})")
    return out


def test_the_check_sees_a_missing_hint():
    source = (
        "def ok(x: int, *args: int, **kw: str) -> None: ...\n"
        "def bare(x, y: int = 1) -> int: ...\n"
        "def _private(x): ...\n"
        "class C:\n"
        "    def __init__(self, a: int) -> None: ...\n"
        "    def m(self, b) -> None: ...\n"
        "    @staticmethod\n"
        "    def s(v: int): ...\n"
        "    def _hidden(self, z): ...\n"
        "    def __repr__(self): ...\n"
        "    def __call__(self, *args): ...\n"
    )
    assert unannotated(source) == [
        "<module>:bare (x)",
        "<module>:C.m (b)",
        "<module>:C.s (return)",
        "<module>:C.__call__ (args, return)",
    ]


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_public_functions_have_type_hints(path):
    module = os.path.relpath(path, os.path.dirname(PACKAGE))
    with open(path, encoding="utf-8") as f:
        missing = unannotated(f.read(), module)
    assert not missing, "public functions without type hints:\n" + "\n".join(missing)


def test_the_allow_list_names_existing_functions():
    known = set()
    for path in _modules():
        module = os.path.relpath(path, os.path.dirname(PACKAGE))
        with open(path, encoding="utf-8") as f:
            known.update(f"{module}:{q}" for q, _, _ in _public_functions(ast.parse(f.read())))
    assert not set(ALLOWED_WITHOUT_HINTS) - known, sorted(set(ALLOWED_WITHOUT_HINTS) - known)
