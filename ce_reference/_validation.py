"""Argument checking and dtype policy shared by every loss.

Every public loss runs its arguments through these helpers before any
arithmetic, so that bad input fails with a ``ValueError`` or ``TypeError``
that names the argument, never with a silent NaN or a bare ``IndexError``
from deep inside NumPy.  None of the helpers modifies its input.

Dtype policy (one rule for all losses)
--------------------------------------
* ``float64`` is computed and returned in ``float64``;
* ``float32`` is computed in ``float32`` (reductions accumulate in float64)
  and returned as ``float32``;
* ``float16`` is computed in ``float32`` and returned as ``float16``;
* integer and bool inputs are promoted to ``float64``;
* anything else (complex, object, strings, datetimes) is a ``TypeError``.
"""

from __future__ import annotations

import math
import operator
import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def compute_dtypes(dtype: np.dtype) -> tuple[np.dtype, np.dtype]:
    """Return ``(compute_dtype, result_dtype)`` for an input dtype (see module doc)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype(np.float64), np.dtype(np.float64)
    if dtype == np.float32:
        return np.dtype(np.float32), np.dtype(np.float32)
    if dtype == np.float16:
        return np.dtype(np.float32), np.dtype(np.float16)
    if dtype.kind in "biu":
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(f"unsupported dtype {dtype}; expected float16/32/64, integer or bool")


def as_numeric_array(name: str, value, *, allow_complex: bool = False) -> np.ndarray:
    """``np.asarray(value)`` that insists on a real numeric (or bool) dtype.

    A ``numpy.ma.MaskedArray`` is a ``TypeError``: ``np.asarray`` would drop its mask
    and the masked entries would count.
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray; its mask would be ignored. Drop the masked "
            "rows instead, or express the mask with weight= (a weight of 0) or, for class "
            "indices, ignore_index=")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged nested lists and the like
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}: {exc}") from None
    ok = "biuf" + ("c" if allow_complex else "")
    if arr.dtype.kind not in ok or (arr.dtype.kind == "f" and arr.itemsize > 8):
        raise TypeError(
            f"{name} must be a real numeric array (float16/32/64, integer or bool), "
            f"got dtype {arr.dtype}"
        )
    return arr


def as_input(name: str, value) -> tuple[np.ndarray, np.dtype, np.dtype]:
    """Validate the first argument of a loss; return it in its compute dtype.

    Returns ``(x, compute_dtype, result_dtype)``.  ``x`` is a new array only when
    a cast is needed; callers never write into it.
    """
    arr = as_numeric_array(name, value)
    compute, result = compute_dtypes(arr.dtype)
    return arr.astype(compute, copy=False), compute, result


def check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative int, or raise naming the argument."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {axis!r}") from None
    if ndim == 0:
        raise ValueError(
            f"{name}={axis} needs an input with a class axis, but the input is 0-dimensional"
        )
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an input with {ndim} dimension(s)")
    return axis % ndim


def check_no_nan(name: str, x: np.ndarray) -> None:
    if x.dtype.kind in "fc" and np.isnan(x).any():
        raise ValueError(f"{name} contains NaN")


def check_unit_interval(name: str, x: np.ndarray, what: str) -> None:
    """``x`` must be finite and in [0, 1] (NaN and inf are rejected too)."""
    if x.dtype.kind in "fc":
        if np.isnan(x).any():
            raise ValueError(f"{name} contains NaN; expected {what} in [0, 1]")
        if np.isinf(x).any():
            raise ValueError(f"{name} contains inf; expected {what} in [0, 1]")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{name} must hold {what} in [0, 1], got values in [{x.min()}, {x.max()}]"
        )


def check_logits(name: str, x: np.ndarray, axis: int | None = None) -> None:
    """Logits: no NaN, no ``+inf``; with a class ``axis``, no row that is all ``-inf``.

    ``-inf`` marks a masked class (probability 0); a row without any finite
    logit has no probability to give to any class.
    """
    check_no_nan(name, x)
    if np.isposinf(x).any():
        raise ValueError(f"{name} contains +inf; expected finite values or -inf (a masked class)")
    if axis is not None and x.size and np.isneginf(np.max(x, axis=axis)).any():
        raise ValueError(f"{name} has a row whose entries are all -inf; no class has probability")


def check_log_probabilities(name: str, x: np.ndarray) -> None:
    """Log-probabilities: no NaN, none above 0 (``-inf`` is a probability of 0)."""
    check_no_nan(name, x)
    if x.size and np.max(x) > 0:
        raise ValueError(f"{name} must hold log-probabilities (<= 0, -inf allowed), "
                         f"got a maximum of {np.max(x)}")


def unit_interval_ok(a: np.ndarray) -> bool:
    """The condition of :func:`check_unit_interval` as a cheap predicate (min and max only):
    False for NaN, inf or any value outside [0, 1]."""
    if a.size == 0:
        return True
    lo, hi = np.min(a), np.max(a)
    return bool(lo >= 0) and bool(hi <= 1)


def nonnegative_finite_ok(a: np.ndarray) -> bool:
    """The condition of :func:`check_nonnegative_finite` as a cheap predicate."""
    if a.size == 0:
        return True
    lo, hi = np.min(a), np.max(a)
    return bool(lo >= 0) and bool(hi < math.inf)


def broadcast_to_input(name: str, value, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Broadcast ``value`` to the input's ``shape`` without changing that shape."""
    arr = as_numeric_array(name, value)
    try:
        out_shape = np.broadcast_shapes(arr.shape, shape)
    except ValueError:
        out_shape = None
    if out_shape != tuple(shape):
        raise ValueError(
            f"{name} of shape {arr.shape} cannot be broadcast to the input's shape {tuple(shape)}"
        )
    return np.broadcast_to(arr.astype(dtype, copy=False), shape)


def check_nonnegative_finite(name: str, w: np.ndarray) -> None:
    if w.dtype.kind == "f" and not np.isfinite(w).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if w.size and w.min() < 0:
        raise ValueError(f"{name} must be non-negative, got a minimum of {w.min()}")


def check_eps(eps, dtype: np.dtype, compute_dtype: np.dtype | None = None):
    """Validate a clipping ``eps`` for ``np.clip(p, eps, 1 - eps)``.

    ``dtype`` is the input's (result) dtype: an ``eps`` for which ``1 - eps``
    rounds to 1 there is an error, since the clip would not keep
    ``log(1 - p)`` finite (scikit-learn #24315).  Returns ``eps`` as a scalar
    of ``compute_dtype`` (default ``dtype``) or ``None``.
    """
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be None or a float, got {type(eps).__name__}")
    e = float(eps)
    if not (0.0 < e < 0.5):
        raise ValueError(f"eps must be None or a float in (0, 0.5), got {eps!r}")
    e_t = dtype.type(e)
    if e_t == 0 or dtype.type(1) - e_t == 1:
        raise ValueError(
            f"eps={eps!r} is too small for {dtype}: 1 - eps rounds to 1 (or eps to 0), "
            f"so log(1 - p) could still be -inf; use eps >= {np.finfo(dtype).eps:.3g}"
        )
    return (compute_dtype or dtype).type(e)


def check_float(name: str, value, lo: float = -math.inf, hi: float = math.inf, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """A real number option in ``[lo, hi]`` (open ends as asked), returned as a Python float.

    A bool, a string or anything that is not a real number is a ``TypeError``
    (``True`` is not 1.0 and ``"0.1"`` is not 0.1 here); NaN and values outside
    the interval are a ``ValueError``; both name the option.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if math.isnan(v) or below or above:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def check_label_smoothing(label_smoothing) -> float:
    return check_float("label_smoothing", label_smoothing, 0.0, 1.0)


def check_ignore_index(ignore_index):
    """``None`` or an int (not a bool); returned as a Python int."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be None or an int, got {ignore_index!r}")
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be None or an int, got {ignore_index!r}") from None


def index_targets(t: np.ndarray, x_shape: tuple, axis: int, ignore_index=None):
    """Validate class-index targets (integer dtype) against an input of ``x_shape``.

    Returns ``(index, keep)``: int64 class ids with ignored rows set to 0, and
    the boolean mask of kept rows (False where ``target == ignore_index``),
    both of the batch shape (``x_shape`` without ``axis``).
    """
    C = x_shape[axis]
    batch = x_shape[:axis] + x_shape[axis + 1:]
    if t.shape != batch:
        raise ValueError(
            f"targets holds class indices (integer dtype) so its shape must be the input's "
            f"shape {x_shape} without the class axis {axis}, i.e. {batch}; got {t.shape}"
        )
    # compared in the targets' own dtype (a uint64 2**63 must not become -2**63)
    if ignore_index is None:          # every row kept: no boolean copy, no select
        keep, kept = np.ones(batch, bool), t
    else:
        keep = t != ignore_index
        kept = t[keep]
    if kept.size and (kept.min() < 0 or kept.max() >= C):
        bad = kept[(kept < 0) | (kept >= C)][0]
        extra = "" if ignore_index is None else f" (other than ignore_index={ignore_index})"
        raise ValueError(
            f"targets holds class index {int(bad)}{extra}, expected indices in [0, {C - 1}] "
            f"for {C} classes"
        )
    if ignore_index is None:          # indices in [0, C): int64 without a copy if they are
        return t.astype(np.int64, copy=False), keep
    return np.where(keep, t, 0).astype(np.int64), keep


def probability_targets(t: np.ndarray, x_shape: tuple, ignore_index=None,
                        probs_what: str = "probabilities", check_values: bool = True,
                        name: str = "targets"):
    """Validate probability / one-hot targets (any non-integer dtype): the input's shape.

    Values are checked (finite, in [0, 1], in the dtype as given) unless
    ``check_values`` is False (a fused kernel checks them block by block).
    ``name`` is the argument's name in the messages (a loss whose second
    argument is not called ``targets``).
    """
    if ignore_index is not None:
        raise ValueError(
            "ignore_index applies only to class-index targets (integer dtype); "
            f"targets has dtype {t.dtype}, i.e. {probs_what}"
        )
    if t.shape != tuple(x_shape):
        raise ValueError(
            f"{name} holds {probs_what} (non-integer dtype) so its shape must equal the "
            f"input's shape {tuple(x_shape)}; got {t.shape}"
        )
    if check_values:
        check_unit_interval(name, t, probs_what)
    return t


def class_weight(weight, C: int, dtype: np.dtype):
    """Validate per-class weights of shape (C,); ``None`` stays ``None``."""
    if weight is None:
        return None
    w = as_numeric_array("weight", weight)
    if w.shape != (C,):
        raise ValueError(f"weight must have shape ({C},), one entry per class, got {w.shape}")
    check_nonnegative_finite("weight", w)
    return w.astype(dtype, copy=False)
