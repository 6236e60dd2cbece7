"""While a student's answer runs, the library's implementation of the same piece is out of reach.

The course library implements every piece an exercise asks for (that is what the notebooks teach
with), and the exercise notebooks import some of it. An answer whose body is ``return
activation_attention(features)`` would agree with any expected value, so comparing values cannot tell
it from an answer written out. What *can* tell them apart is whether the library's object is called.
While the answer runs, :func:`library_blocked` replaces each blocked object

* on the object that owns it (the module attribute or the class method), which covers
  ``import hsbs_lib.losses.hst as hst; hst.activation_attention(...)``, an import inside the answer's
  body and a method reached through an instance (``bsa(z)`` reaches ``BatchSimilarityAttention.forward``);
* under every name that binds it in the answer's global namespace (the notebook's), which covers
  ``from ... import activation_attention`` in the notebook and aliases of it;
* in the answer's closure cells and default arguments;

by a tripwire that records the call and raises. The answer fails when a tripwire was reached, even if
it caught the exception. The answer itself being the library object (``check(activation_attention)``)
fails before it runs. A student who copies the library's source into a cell is not caught: that is
reading, and the policy in docs/GRADING.md says so.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Callable, Iterator


class LibraryCalled(RuntimeError):
    """Raised by a tripwire: the answer called the library's implementation of the exercise."""


def _resolve(target: str):
    """'package.module:Name.attr' -> (owner, attribute name, object)."""
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def _unwrapped(function) -> list:
    """The objects an answer may be an alias of: itself, a bound method's function, a partial's function."""
    seen = [function]
    for attribute in ("__func__", "func", "__wrapped__"):
        inner = getattr(function, attribute, None)
        if inner is not None:
            seen += _unwrapped(inner)
    return seen


def _same(a, b) -> bool:
    return a is b or getattr(a, "__func__", None) is b


@contextlib.contextmanager
def library_blocked(answer: Callable | None, targets: tuple[str, ...]) -> Iterator[list[str]]:
    """Within the block the ``targets`` ('module:attr' or 'module:Class.method') cannot be called by
    ``answer``; yields the list of the targets that were called (empty when the answer is its own)."""
    called: list[str] = []
    resolved = [(target, *_resolve(target)) for target in targets]
    for target, _owner, _name, original in resolved:
        if answer is not None and any(_same(alias, original) for alias in _unwrapped(answer)):
            raise AssertionError(f"not yet: the answer is the library's own `{target.replace(':', '.')}`; "
                                 "the exercise is to write it yourself")
    restore: list[Callable[[], None]] = []

    def tripwire_for(target: str, original):
        @functools.wraps(original if callable(original) else (lambda *a, **k: None))
        def tripwire(*args, **kwargs):
            called.append(target)
            raise LibraryCalled(f"the answer calls the library's `{target.replace(':', '.')}`")
        return staticmethod(tripwire) if isinstance(original, staticmethod) else tripwire

    try:
        for target, owner, name, original in resolved:
            tripwire = tripwire_for(target, original)
            setattr(owner, name, tripwire)
            restore.append(functools.partial(setattr, owner, name, original))
            if answer is None:
                continue
            for function in _unwrapped(answer):
                namespace = getattr(function, "__globals__", None)
                if namespace is not None:
                    for key, value in list(namespace.items()):
                        if _same(value, original) and not isinstance(value, type):
                            namespace[key] = tripwire
                            restore.append(functools.partial(namespace.__setitem__, key, value))
                for cell in getattr(function, "__closure__", None) or ():
                    try:
                        value = cell.cell_contents
                    except ValueError:
                        continue
                    if _same(value, original):
                        cell.cell_contents = tripwire
                        restore.append(functools.partial(setattr, cell, "cell_contents", value))
                defaults = getattr(function, "__defaults__", None)
                if defaults and any(_same(value, original) for value in defaults):
                    function.__defaults__ = tuple(tripwire if _same(v, original) else v for v in defaults)
                    restore.append(functools.partial(setattr, function, "__defaults__", defaults))
        yield called
    finally:
        for undo in reversed(restore):
            undo()
