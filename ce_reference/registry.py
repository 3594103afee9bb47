"""The one registry of losses: the verifier, tests, audits and benchmarks iterate :data:`LOSSES`.

A loss is one unit (see ``docs/adding-a-loss.md``): its module defines a
:class:`~ce_reference.spec.LossSpec` and this registry makes it known.
Built-in losses are registered from :data:`ce_reference.losses.BUILTIN`; any
other loss (yours, defined anywhere) joins with :func:`register`, the public
extension point, and is then verified, audited, contract-tested and
benchmarked like the built-in ones.
"""

from __future__ import annotations

from .losses import BUILTIN
from .spec import LossSpec, Option, Oracle, OptionSet, load, option_set

__all__ = ["LOSSES", "LossSpec", "Option", "OptionSet", "Oracle", "get", "load",
           "option_set", "register", "unregister"]

#: name -> spec of every registered loss.
LOSSES: dict[str, LossSpec] = {}


def register(spec: LossSpec, *, replace: bool = False) -> LossSpec:
    """Make ``spec`` known to the verifier, the audit, the tests and the benchmarks.

    Raises ``ValueError`` if a different loss of that name is registered
    (``replace=True`` overrides) and ``TypeError`` for anything but a
    :class:`LossSpec`.  Returns the spec, so it can decorate an assignment.
    """
    if not isinstance(spec, LossSpec):
        raise TypeError(f"spec must be a LossSpec, got {type(spec).__name__}")
    old = LOSSES.get(spec.name)
    if old is not None and old is not spec and not replace:
        raise ValueError(f"a loss named {spec.name!r} is already registered; "
                         "pass replace=True to override it")
    LOSSES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered loss (``KeyError`` if unknown)."""
    del LOSSES[name]


def get(name_or_spec) -> LossSpec:
    """The spec of a registered loss, by name (or a spec itself, or ``"module:attr"``)."""
    if isinstance(name_or_spec, LossSpec):
        return name_or_spec
    if isinstance(name_or_spec, str) and name_or_spec in LOSSES:
        return LOSSES[name_or_spec]
    if isinstance(name_or_spec, str) and ":" in name_or_spec:
        spec = load(name_or_spec)
        if not isinstance(spec, LossSpec):
            raise TypeError(f"{name_or_spec!r} is a {type(spec).__name__}, not a LossSpec")
        return spec
    raise ValueError(f"unknown loss {name_or_spec!r}; expected one of {sorted(LOSSES)}")


for _spec in BUILTIN:
    register(_spec)
del _spec
