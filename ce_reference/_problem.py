r"""Validated arguments of a loss call: checked once, converted once.

Every loss builds one *problem* from its arguments -- :class:`ClassProblem` for
losses over a class axis, :class:`ElementwiseProblem` for elementwise losses --
and everything downstream consumes it: the plain functions, the fused kernels,
the generic blocked driver, the Hessian-vector products and the conventions.
A problem holds

* the input as given (a validated numeric array), its compute and result
  dtypes (the package's one dtype policy, :func:`._validation.compute_dtypes`),
  lazily its compute-dtype copy;
* the targets and weights, validated and shaped;
* the reduction and its ``mean`` denominator, decided here and only here
  (:func:`._reduction.weighted_count`), and the gradient's scale.

Validation has two parts.  The *structure* (types, shapes, options, index
ranges: O(number of rows)) is always checked when the problem is built.  The
*values* of full-size arrays (NaN or infinite logits, probabilities outside
[0, 1]) need a pass over the data: the plain functions check them at once
(``check_values=True``); a fused kernel checks them inside its own pass over
each block and, when a block is bad, calls :meth:`check_values` to raise the
error the plain function would raise.

A problem can be cut into blocks (:meth:`ClassProblem.block`,
:meth:`ElementwiseProblem.tile`) that share its denominator and scale, so that
the same per-block code computes a whole batch or one block of it.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from . import _validation as V
from ._reduction import grad_scale, reduce_loss, to_result, weighted_count


def check_input_values(kind: str | None, name: str, x: np.ndarray, axis=None) -> None:
    """Raise the plain function's error for the values of an input of ``kind``.

    ``"probabilities"``: finite, in [0, 1]; ``"log_probabilities"``: no NaN,
    no ``+inf``, none above 0 (``-inf`` is a zero probability); ``"logits"``:
    no NaN, and over a class ``axis`` also no ``+inf`` and no row of only
    ``-inf`` (elementwise logits may be infinite: the loss has a limit there);
    ``"real"``: no NaN; ``None``: anything.
    """
    if kind == "probabilities":
        V.check_unit_interval(name, x, "probabilities")
    elif kind == "log_probabilities":
        V.check_log_probabilities(name, x)
    elif kind == "real":
        V.check_no_nan(name, x)
    elif kind == "logits" and axis is None:
        V.check_no_nan(name, x)
    elif kind == "logits":
        V.check_logits(name, x, axis)
    elif kind is not None:
        raise ValueError(f"unknown input kind {kind!r}")


def deferred_values(build):
    """``build(False)``: a problem whose value checks are left to a fused kernel.

    ``build(check_values)`` constructs the problem.  When the structure is
    wrong, the error raised is the one ``build(True)`` -- the plain function's
    validation, in its order -- raises, so that every entry point reports the
    same problem first (a NaN logit before a bad class index).
    """
    try:
        return build(False)
    except (TypeError, ValueError):
        build(True)
        raise


class ClassProblem:
    r"""Arguments of a loss over a class axis (softmax, categorical, ...).

    The input of shape ``(..., C, ...)`` (class axis ``axis``) is viewed as
    ``(pre, C, post)``; per-class work uses the class-last view ``x`` of shape
    ``(pre, post, C)`` and per-row results have shape ``(pre, post)``, which
    reshape to the batch shape (the input's shape without the class axis).

    Attributes
    ----------
    raw : ndarray
        The input as given (numeric, not cast).
    cdt, rdt : numpy.dtype
        Compute and result dtypes.
    ax, C, pre, post : int
        Class axis (non-negative), number of classes, and the sizes before and
        after it.
    index, keep : ndarray or None
        Class-index targets, shape ``(pre, post)``: int64 ids (0 on ignored
        rows) and the mask of kept rows.  ``None`` for probability targets.
    all_kept : bool
        No ``ignore_index``: every row is kept (``keep`` is all True).
    targets_raw : ndarray or None
        Probability targets as given, viewed ``(pre, C, post)``.
    weight : ndarray or None
        Per-class weights ``(C,)`` in the compute dtype.
    reduction : str
    denominator : float
        ``mean`` denominator: :math:`\sum_n w_{y_n}` over kept rows (their count
        without weights) for index targets, the number of rows for probability
        targets (PyTorch's two rules).
    scale : float
        Factor from the gradient of the sum of the row losses to the
        gradient of the reduced loss (:func:`._reduction.grad_scale`).
    targets_name : str
        The second argument's name in error messages (``"targets"``; a loss
        whose second argument is, e.g., a teacher's log-probabilities names it).
    backend : str
        The kernels of ``value_and_grad`` (:mod:`ce_reference.backends`): ``"numpy"``
        unless the loss's ``value_and_grad`` set it from its ``backend=`` argument.
    """

    backend = "numpy"

    def __init__(self, x, targets, *, input_name, input_kind, axis=-1, weight=None,
                 ignore_index=None, reduction="mean", probs_what="probabilities",
                 index_only=False, targets_kind="probabilities", targets_name="targets",
                 check_values=True):
        raw = V.as_numeric_array(input_name, x)
        self.cdt, self.rdt = V.compute_dtypes(raw.dtype)
        self.raw, self.input_name, self.input_kind = raw, input_name, input_kind
        self.ax = ax = V.normalize_axis(axis, raw.ndim)
        if raw.shape[ax] == 0:
            raise ValueError(f"{input_name} has an empty class axis {ax}; "
                             "expected at least one class")
        if check_values:
            check_input_values(input_kind, input_name, raw.astype(self.cdt, copy=False), ax)
        self.shape = raw.shape
        self.C = raw.shape[ax]
        self.pre, self.post = math.prod(raw.shape[:ax]), math.prod(raw.shape[ax + 1:])
        self.batch_shape = raw.shape[:ax] + raw.shape[ax + 1:]
        self.targets_kind, self.targets_name = targets_kind, targets_name
        self._targets(targets, ignore_index, probs_what, index_only, check_values)
        self.weight = V.class_weight(weight, self.C, self.cdt)
        self.given = {targets_name: self.targets_given, "weight": weight}
        self.reduction = V.check_reduction(reduction)
        self.denominator = self._denominator()
        if self.reduction == "mean" and math.isinf(self.denominator):
            self._rescale_weight()
        self.scale = grad_scale(self.reduction, self.denominator)

    def _denominator(self) -> float:
        if self.index is None or (self.all_kept and self.weight is None):
            return float(self.pre * self.post)
        wy = None if self.weight is None else self.weight[self.index]
        with np.errstate(over="ignore"):       # see _rescale_weight
            return weighted_count(self.keep, wy)

    def _rescale_weight(self) -> None:
        """Finite class weights whose sum overflows (``[1e308, 1e308]``): a ``mean`` is
        invariant to scaling every weight, so they are divided by an exact power of 2 that
        brings the largest to about 1 (the value and gradient of ``sum``/``none`` keep the
        weights as given)."""
        exponent = np.frexp(np.max(self.weight))[1]
        self.weight = np.ldexp(self.weight, -exponent).astype(self.cdt)
        self.denominator = self._denominator()

    def _targets(self, targets, ignore_index, probs_what, index_only, check_values):
        t = V.as_numeric_array(self.targets_name, targets)
        ignore_index = V.check_ignore_index(ignore_index)
        self.index = self.keep = self.targets_raw = None
        self.all_kept = ignore_index is None        # no row can be ignored
        if t.dtype.kind in "iu":
            index, keep = V.index_targets(t, self.shape, self.ax, ignore_index)
            self.index = index.reshape(self.pre, self.post)
            self.keep = keep.reshape(self.pre, self.post)
            self.targets_given = t
            return
        if index_only:
            raise TypeError(f"{self.targets_name} must hold integer class indices, "
                            f"got dtype {t.dtype}")
        V.probability_targets(t, self.shape, ignore_index, probs_what,
                              check_values and self.targets_kind == "probabilities",
                              name=self.targets_name)
        if check_values and self.targets_kind != "probabilities":
            check_input_values(self.targets_kind, self.targets_name, t)
        self.targets_raw = t.reshape(self.pre, self.C, self.post)
        self.targets_given = t
        self.probs_what = probs_what

    # ------------------------------------------------------------------ views
    @cached_property
    def x3(self) -> np.ndarray:
        """The input as given, viewed ``(pre, C, post)`` (a copy only if it cannot be viewed)."""
        return self.raw.reshape(self.pre, self.C, self.post)

    @cached_property
    def x(self) -> np.ndarray:
        """Class-last input ``(pre, post, C)`` in the compute dtype (a copy only if cast)."""
        return np.moveaxis(self.x3, 1, -1).astype(self.cdt, copy=False)

    @cached_property
    def probs(self) -> np.ndarray | None:
        """Class-last probability targets ``(pre, post, C)`` in the compute dtype."""
        if self.targets_raw is None:
            return None
        return np.moveaxis(self.targets_raw, 1, -1).astype(self.cdt, copy=False)

    # ------------------------------------------------------------------ checks
    def check_values(self) -> None:
        """The value checks skipped with ``check_values=False``; raises the plain error."""
        check_input_values(self.input_kind, self.input_name,
                           self.raw.astype(self.cdt, copy=False), self.ax)
        if self.targets_raw is not None and self.targets_kind == "probabilities":
            V.check_unit_interval(self.targets_name, self.targets_given, self.probs_what)
        elif self.targets_raw is not None:
            check_input_values(self.targets_kind, self.targets_name, self.targets_given)

    def values_ok(self) -> bool:
        """The condition of :meth:`check_values` as a cheap predicate (min/max passes)."""
        x = self.raw.astype(self.cdt, copy=False)
        if self.input_kind == "probabilities" and not V.unit_interval_ok(x):
            return False
        # max over the classes is NaN, +inf or -inf exactly when check_logits fails
        if (self.input_kind == "logits" and x.size
                and not np.isfinite(np.max(x, axis=self.ax)).all()):
            return False
        if self.input_kind in ("log_probabilities", "real"):
            try:
                check_input_values(self.input_kind, self.input_name, x)
            except ValueError:
                return False
        if self.targets_raw is None:
            return True
        if self.targets_kind == "probabilities":
            return V.unit_interval_ok(self.targets_given)
        try:
            check_input_values(self.targets_kind, self.targets_name, self.targets_given)
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------ results
    def reduce(self, rows: np.ndarray):
        """Reduce per-row losses ``(pre, post)`` (or the batch shape) to the result."""
        if self.reduction == "none":
            rows = np.reshape(rows, self.batch_shape)
        return reduce_loss(rows, self.reduction, self.denominator, self.rdt)

    def finish_grad(self, g: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Class-last gradient ``(pre, post, C)`` -> the input's layout and result dtype.

        Multiplies by :attr:`scale` first unless ``scaled``.
        """
        if not scaled:
            g = g * g.dtype.type(self.scale)
        return to_result(np.moveaxis(g, -1, 1).reshape(self.shape), self.rdt)

    # ------------------------------------------------------------------ blocks
    def block(self, pre_slice: slice, post_slice: slice) -> "ClassProblem":
        """The rows ``[pre_slice, post_slice]`` as a problem with the same denominator."""
        sub = object.__new__(type(self))
        sub.__dict__.update({k: v for k, v in self.__dict__.items()
                             if k not in ("x", "probs", "x3")})
        x3 = self.x3[pre_slice, :, post_slice]
        sub.raw = sub.x3 = x3
        sub.ax, sub.shape = 1, x3.shape
        sub.pre, sub.post = x3.shape[0], x3.shape[2]
        sub.batch_shape = (sub.pre, sub.post)
        if self.index is not None:
            sub.index = self.index[pre_slice, post_slice]
            sub.keep = self.keep[pre_slice, post_slice]
        else:
            sub.targets_raw = self.targets_raw[pre_slice, :, post_slice]
            sub.targets_given = sub.targets_raw
        return sub


class ElementwiseProblem:
    """Arguments of an elementwise loss (binary cross-entropy and friends).

    ``operands`` are the further arrays of the loss, each broadcast against
    the input (``targets``, ``weight``, ``pos_weight``, ...): they are checked
    for shape at once and kept un-broadcast (:meth:`operand` gives the
    broadcast view in the compute dtype).  Each has a value kind: ``"unit"``
    (in [0, 1], checked in the compute dtype) or ``"weight"`` (non-negative,
    finite).  The ``mean`` denominator is the number of elements.  ``backend`` as
    for :class:`ClassProblem`.
    """

    backend = "numpy"
    UNIT_WHAT = {"targets": "binary targets"}

    def __init__(self, x, *, input_name, input_kind, operands, reduction="mean",
                 check_values=True):
        raw = V.as_numeric_array(input_name, x)
        self.cdt, self.rdt = V.compute_dtypes(raw.dtype)
        self.raw, self.input_name, self.input_kind = raw, input_name, input_kind
        self.shape = raw.shape
        if check_values:
            check_input_values(input_kind, input_name, raw.astype(self.cdt, copy=False))
        self.ops, self.kinds = {}, {}
        for name, value, kind in operands:
            self.kinds[name] = kind
            if value is None:
                self.ops[name] = None
                continue
            arr = V.as_numeric_array(name, value)
            V.broadcast_to_input(name, arr, raw.shape, arr.dtype)     # shape check: a view
            self.ops[name] = arr
            if check_values:
                self._check_operand(name)
        self.given = dict(self.ops)
        self.reduction = V.check_reduction(reduction)
        self.denominator = float(raw.size)
        self.scale = grad_scale(self.reduction, self.denominator)

    @cached_property
    def x(self) -> np.ndarray:
        return self.raw.astype(self.cdt, copy=False)

    def operand(self, name: str) -> np.ndarray | None:
        """The operand broadcast to the input's shape, in the compute dtype (a view)."""
        arr = self.ops.get(name)
        if arr is None:
            return None
        return np.broadcast_to(arr.astype(self.cdt, copy=False), self.shape)

    def is_full(self, name: str) -> bool:
        """True when the operand has the input's full shape (checked per tile by kernels)."""
        arr = self.ops.get(name)
        return arr is not None and arr.shape == self.shape

    def _check_operand(self, name: str) -> None:
        arr = self.ops[name].astype(self.cdt, copy=False)
        if self.kinds[name] == "unit":
            V.check_unit_interval(name, arr, self.UNIT_WHAT.get(name, "probabilities"))
        else:
            V.check_nonnegative_finite(name, arr)

    def check_values(self) -> None:
        """Value checks (the input's, then each operand's, in order); raises the plain error."""
        check_input_values(self.input_kind, self.input_name, self.raw.astype(self.cdt, copy=False))
        for name in self.ops:
            if self.ops[name] is not None:
                self._check_operand(name)

    def check_broadcast_values(self) -> None:
        """Value checks of the operands smaller than the input (a fused kernel checks the
        input and the full-size operands tile by tile)."""
        try:
            for name, arr in self.ops.items():
                if arr is not None and arr.shape != self.shape:
                    self._check_operand(name)
        except ValueError:
            self.check_values()     # the plain function's order: the input's values first
            raise

    def values_ok(self) -> bool:
        """The condition of :meth:`check_values` as a cheap predicate (min/max passes)."""
        x = self.raw.astype(self.cdt, copy=False)
        if self.input_kind == "probabilities" and not V.unit_interval_ok(x):
            return False
        if self.input_kind == "logits" and x.size and np.isnan(np.max(x)):   # max keeps NaN
            return False
        for name, arr in self.ops.items():
            if arr is None:
                continue
            a = arr.astype(self.cdt, copy=False)
            ok = V.unit_interval_ok if self.kinds[name] == "unit" else V.nonnegative_finite_ok
            if not ok(a):
                return False
        return True

    def reduce(self, loss: np.ndarray):
        return reduce_loss(loss, self.reduction, self.denominator, self.rdt)

    def tile(self, views: dict) -> "ElementwiseProblem":
        """A problem over one tile: ``views`` maps the input and operand names to tile views."""
        sub = object.__new__(type(self))
        sub.__dict__.update({k: v for k, v in self.__dict__.items() if k != "x"})
        sub.raw = views["input"]
        sub.shape = sub.raw.shape
        sub.ops = {n: (None if self.ops[n] is None else views[n]) for n in self.ops}
        return sub
