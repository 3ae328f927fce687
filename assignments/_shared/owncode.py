"""Checks the autograder runs before every test: the graded code is the student's own.

The course rule is "numpy, scipy, math (and torch in assignments 3 and 4) only": a function that
calls ``privlab`` (the course's reference implementation, installed on the course hub because the
chapters need it) scores zero for its question, because every test of the question starts with
``assert_own_code``. The check follows the names a function's code uses, transitively through the
other functions and classes defined in the notebook, closures, defaults and ``functools.partial``;
it finds ``import privlab...`` inside a function, a module alias (``pl.gaussian...``) and any
imported object whose ``__module__`` is in privlab. It is a static check of Python objects, not a
sandbox: code that builds the module name at run time (``__import__("priv" + "lab")``) escapes it,
so the teacher still reads the submissions that score suspiciously well.

``reference_helpers`` swaps the helpers a function calls by name (its globals) for reference ones
while a test runs, so that a question is graded on its own and a mistake in an earlier question
does not cost points twice.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import inspect
import types

FORBIDDEN = ("privlab",)


def _forbidden(module_name) -> bool:
    return isinstance(module_name, str) and module_name.split(".")[0] in FORBIDDEN


def _code_objects(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def assert_own_code(*objs) -> None:
    """Raise ``AssertionError`` if any object (function, class, partial) uses ``privlab``.

    Functions defined in the notebook are followed through the globals they name; library
    functions (numpy, torch, ...) are only checked for the module they come from.
    """
    roots = {id(getattr(o, "__globals__", None)) for o in objs if isinstance(o, types.FunctionType)}
    seen, stack = set(), [(o, repr(getattr(o, "__name__", o))) for o in objs]
    while stack:
        obj, where = stack.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            if _forbidden(obj.__name__):
                raise AssertionError(f"{where} uses the module {obj.__name__}: write it with numpy/scipy/torch")
            continue
        if isinstance(obj, functools.partial):
            stack += [(x, where) for x in (obj.func, *obj.args, *obj.keywords.values())]
            continue
        if inspect.ismethod(obj):
            obj = obj.__func__
        if _forbidden(getattr(obj, "__module__", None)):
            raise AssertionError(f"{where} uses {obj.__module__}.{getattr(obj, '__qualname__', obj)}: "
                                 "the rules allow numpy/scipy/torch only here")
        if isinstance(obj, type):
            if any(id(getattr(f, "__globals__", None)) in roots for f in vars(obj).values()):
                stack += [(f, f"{where}.{name}") for name, f in vars(obj).items() if callable(f)]
            continue
        if not isinstance(obj, types.FunctionType):
            continue
        names = set()
        for code in _code_objects(obj.__code__):
            for ins in dis.get_instructions(code):
                if ins.opname == "IMPORT_NAME" and _forbidden(ins.argval):
                    raise AssertionError(f"{where} imports {ins.argval}: the rules allow numpy/scipy/torch only here")
                if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                    names.add(ins.argval)  # global names only: attributes (x.epsilon) are not followed
        if id(obj.__globals__) not in roots:
            continue  # a library function: its module was checked above
        stack += [(obj.__globals__[n], f"{where} -> {n}") for n in names if n in obj.__globals__]
        cells = [c.cell_contents for c in (obj.__closure__ or ()) if c.cell_contents is not None]
        stack += [(x, where) for x in (*cells, *(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values())]


@contextlib.contextmanager
def reference_helpers(fn, **helpers):
    """While the block runs, the global names ``helpers`` seen by ``fn`` are the given objects."""
    env = getattr(fn, "__globals__", None)
    if env is None:
        yield
        return
    missing = object()
    saved = {name: env.get(name, missing) for name in helpers}
    env.update(helpers)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                env.pop(name, None)
            else:
                env[name] = value
