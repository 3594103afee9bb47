"""Text and JSON rendering shared by the verifier, the audits and the command line.

A leaf module (NumPy only): arrays printed exactly (the shortest repr that
round-trips, so a printed input can be pasted back), error sizes in eps,
JSON made strict (non-finite floats as strings), and the check that a report
can be written before the work that produces it starts.
"""

from __future__ import annotations

import math
import os

import numpy as np


def fmt_array(a, max_elems: int = 40) -> str:
    """``a`` exactly (shortest round-trip repr) with its float dtype, or a placeholder when
    it has more than ``max_elems`` elements."""
    a = np.asarray(a)
    if a.size > max_elems:
        return f"<{a.dtype} array {a.shape}>"
    with np.printoptions(floatmode="unique", threshold=max(max_elems, 1), linewidth=10**6):
        s = np.array2string(a, separator=", ").replace("\n", "")
    return f"{s} ({a.dtype})" if a.dtype.kind == "f" else s


def fmt_value(v) -> str:
    """An option value: arrays through :func:`fmt_array`, anything else by ``repr``."""
    return fmt_array(v) if isinstance(v, np.ndarray) else repr(v)


def fmt_eps(v) -> str:
    """An error in eps: ``3.1``, ``4.5e+06``, ``inf``; ``-`` for None."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return "inf"
    if v == 0:
        return "0"
    text = f"{v:.2g}" if v < 10 else (f"{v:.0f}" if v < 1e4 else f"{v:.2g}")
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def clean_json(o):
    """Replace non-finite floats by strings and NumPy scalars / arrays by Python ones."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if isinstance(o, np.ndarray):
        return clean_json(o.tolist())
    if isinstance(o, np.dtype):
        return o.name
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        try:
            o = o.item()
        except (ValueError, TypeError):
            return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    return str(o)


def check_writable(path, what: str) -> None:
    """``ValueError`` unless a file can be written at ``path`` (its directory exists and is
    writable, it is not a directory): checked before the work that produces it."""
    path = os.fspath(path)
    if path == "" or os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{what} {path!r}: directory {parent!r} does not exist")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise ValueError(f"{what} {path!r} is not writable")
