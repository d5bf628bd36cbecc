"""``python -m experiments.api_doc``: write ``docs/api.md``, the public API, from the docstrings.

For each public subpackage of itscale, every public name (its ``__all__``, else the names it imports
that do not start with ``_``): its signature and the first paragraph of its docstring. A test checks
that ``docs/api.md`` equals this generator's output, so the page cannot drift from the code.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import types

import itscale

MODULES = ("itscale", "itscale.core", "itscale.paths", "itscale.models", "itscale.refine", "itscale.search",
           "itscale.tokens", "itscale.hybrid", "itscale.verifiers", "itscale.scaling")
OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _module(name: str) -> types.ModuleType:
    module = itscale
    for part in name.split(".")[1:]:
        module = getattr(module, part)
    return module


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_") and n not in ("annotations",)]
    return sorted(names, key=str.lower)


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _constant(value) -> str:
    """A module constant: a registry by its keys, anything else by its value."""
    if isinstance(value, dict):
        return "registry of " + ", ".join(f"``{key}``" for key in value)
    return f"``{value!r}``"


def _signature(name: str, obj) -> str:
    """``name(arguments)`` without annotations; functions as defaults by name (no memory addresses)."""
    if isinstance(obj, types.ModuleType):
        return f"`{name}` (module)"
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"`{name}`"
    empty = inspect.Parameter.empty
    parameters = [p.replace(annotation=empty,
                            default=_Named(p.default) if p.default is not empty and callable(p.default) else p.default)
                  for p in signature.parameters.values()]
    return f"`{name}{signature.replace(parameters=parameters, return_annotation=empty)}`"


class _Named:
    """A default value shown by its name."""

    def __init__(self, value):
        self.name = getattr(value, "__name__", type(value).__name__)

    def __repr__(self) -> str:
        return self.name


def render() -> str:
    lines = ["# itscale public API", "",
             "Generated from the docstrings by `python -m experiments.api_doc`; do not edit by hand.", ""]
    for module_name in MODULES:
        module = _module(module_name)
        lines += [f"## `{module_name}`", "", _summary(module), ""]
        for name in _public_names(module):
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) and module_name != "itscale":
                continue
            summary = _summary(obj) if callable(obj) or isinstance(obj, types.ModuleType) else _constant(obj)
            lines.append(f"- {_signature(name, obj)}: {summary}".rstrip(": "))
        lines.append("")
    return re.sub(r" at 0x[0-9a-f]+", "", "\n".join(lines))     # reprs of functions: no memory addresses


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
