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

import operator
from dataclasses import dataclass

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
    """``np.asarray(value)`` that insists on a real numeric (or bool) dtype."""
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


def check_label_smoothing(label_smoothing) -> float:
    try:
        ls = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a float, got {label_smoothing!r}") from None
    if not (0.0 <= ls <= 1.0):  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return ls


@dataclass(frozen=True)
class ClassTargets:
    """Canonical form of categorical targets, with the class axis moved last.

    Exactly one of ``index`` / ``probs`` is set.

    index : int64 array of shape ``batch`` (class ids; ignored rows hold 0)
    keep  : bool array of shape ``batch`` (False where ``target == ignore_index``)
    probs : float array of shape ``batch + (C,)``
    """

    index: np.ndarray | None
    keep: np.ndarray | None
    probs: np.ndarray | None


def class_targets(targets, x_shape: tuple, axis: int, dtype: np.dtype,
                  ignore_index=None, probs_what: str = "probabilities") -> ClassTargets:
    """Validate categorical targets against an input of ``x_shape`` (class axis ``axis``).

    Integer targets are class indices of shape ``x_shape`` without ``axis``;
    anything else (float, bool) is a probability / one-hot array of ``x_shape``.
    """
    t = as_numeric_array("targets", targets)
    C = x_shape[axis]
    batch = x_shape[:axis] + x_shape[axis + 1:]
    if ignore_index is not None:
        if isinstance(ignore_index, bool):
            raise TypeError(f"ignore_index must be None or an int, got {ignore_index!r}")
        try:
            ignore_index = operator.index(ignore_index)
        except TypeError:
            raise TypeError(f"ignore_index must be None or an int, got {ignore_index!r}") from None
    if t.dtype.kind in "iu":
        if t.shape != batch:
            raise ValueError(
                f"targets holds class indices (integer dtype) so its shape must be the input's "
                f"shape {x_shape} without the class axis {axis}, i.e. {batch}; got {t.shape}"
            )
        t64 = t.astype(np.int64)
        keep = np.ones(batch, bool) if ignore_index is None else (t64 != ignore_index)
        kept = t64[keep]
        if kept.size and (kept.min() < 0 or kept.max() >= C):
            bad = kept[(kept < 0) | (kept >= C)][0]
            extra = "" if ignore_index is None else f" (other than ignore_index={ignore_index})"
            raise ValueError(
                f"targets holds class index {bad}{extra}, expected indices in [0, {C - 1}] "
                f"for {C} classes"
            )
        index = np.where(keep, t64, 0)
        return ClassTargets(index, keep, None)
    if ignore_index is not None:
        raise ValueError(
            "ignore_index applies only to class-index targets (integer dtype); "
            f"targets has dtype {t.dtype}, i.e. {probs_what}"
        )
    if t.shape != tuple(x_shape):
        raise ValueError(
            f"targets holds {probs_what} (non-integer dtype) so its shape must equal the "
            f"input's shape {tuple(x_shape)}; got {t.shape}"
        )
    check_unit_interval("targets", t, probs_what)
    return ClassTargets(None, None, np.moveaxis(t.astype(dtype, copy=False), axis, -1))


def class_weight(weight, C: int, dtype: np.dtype):
    """Validate per-class weights of shape (C,); ``None`` stays ``None``."""
    if weight is None:
        return None
    w = as_numeric_array("weight", weight)
    if w.shape != (C,):
        raise ValueError(f"weight must have shape ({C},), one entry per class, got {w.shape}")
    check_nonnegative_finite("weight", w)
    return w.astype(dtype, copy=False)
