"""The losses, one module each: formulas, value, gradient, value-and-gradient, HVP and spec.

A loss module ``ce_reference/losses/<name>.py`` holds its NumPy
implementation, lists its public functions in ``__all__`` and defines a
:class:`~ce_reference.spec.LossSpec` named ``SPEC``.  Every such module (any
module here whose name does not start with ``_``) is a built-in loss: it is
found here, registered by :mod:`ce_reference.registry` and its public
functions are exported by :mod:`ce_reference` -- adding a loss edits no list.
Modules are imported in name order, which is the order of the reports.
"""

from __future__ import annotations

import importlib
import pkgutil

#: The loss modules, in name order.
MODULES = tuple(importlib.import_module(f"{__name__}.{info.name}")
                for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
                if not info.name.startswith("_"))

#: The specs of the built-in losses.
BUILTIN = tuple(m.SPEC for m in MODULES)

#: Every public function of every loss (``ce_reference`` exports them).
PUBLIC = {name: getattr(m, name) for m in MODULES for name in m.__all__}
