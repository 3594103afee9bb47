"""The one case type: an input to a loss, for the verifier and every audit.

A :class:`Case` is a call ``loss(x, targets, **kwargs)`` plus what a
generic tool needs to know about its arrays without knowing the loss: the
class axis of ``x`` (or none: an elementwise loss), the domain of ``x``
(logits, probabilities, log-probabilities), the kind of the targets, how
each array keyword lines up with ``x``, and which keywords define the call
and must never be changed.  The verifier draws cases from a loss's spec
(:mod:`.sweep`), the framework audits from named regions (:mod:`.regions`),
and the one shrinker (:mod:`.shrink`) simplifies any of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .._format import clean_json, fmt_array

#: How an array keyword lines up with ``x``: broadcast against the whole input
#: (right-aligned), along its last axis only, one entry per class, or one entry
#: per example (the batch shape: ``x`` without its class axis).
ARRAY_KINDS = ("input", "last", "classes", "batch")


@dataclass(frozen=True)
class Layout:
    """Shape of the first argument, its class axis (class-axis losses) and the reduction;
    ``classes``: the number of classes when they are not an axis of the first argument
    (a linear cross-entropy: the rows of ``linear_weight``)."""

    shape: tuple
    axis: int | None
    reduction: str
    classes: int | None = None


@dataclass
class Case:
    """One input: call ``loss(x, targets, **kwargs)``.

    Provenance (all optional; the first fields keep their historical
    positional order): ``loss`` and ``option_set`` name the row the case was
    drawn for, ``dtype`` the dtype under test (default ``x.dtype``; an audit
    compares a float32 case's result with the reference at the float64 copy of
    the same values, and keeps ``dtype`` float32), ``region`` the input region,
    ``index`` and ``seed`` regenerate it, ``layout`` is the verifier's shape
    layout.  ``v`` is the direction of a Hessian-vector product, ``kink`` flags
    elements of ``x`` sitting on a clip boundary.

    Structure (keyword-only), read by the shrinker and the reports:

    ``axis``
        The class axis of ``x`` (a non-negative int), None for an elementwise
        loss.  Default: ``kwargs["axis"]`` when given.
    ``domain``
        ``"logits"``, ``"probs"``, ``"log_probs"`` or ``"features"`` (the input
        of a linear layer, see ``linear``): what ``x`` holds.  With a
        class axis, probability and log-probability rows are distributions and
        are never edited entry by entry.
    ``target_kind``
        ``hard``, ``soft``, ``index``, ``onehot`` or ``log_soft`` (see
        :data:`ce_reference.spec.TARGET_KINDS`); derived from the shapes when
        None.
    ``arrays``
        ``{keyword: kind}`` for the array keywords (:data:`ARRAY_KINDS`).
    ``fixed``
        Keywords that define the call (``axis``, a convention flag, a keyword
        the audited function does not accept): never dropped or changed.
    ``ignore``
        The keyword holding the sentinel that marks ignored index targets.
    ``flags``
        Free-form run modes of an adapter (e.g. ``"run eagerly"``), shown by
        :meth:`describe`.
    ``linear``
        For a *linear* cross-entropy (``domain="features"``): the keyword of
        the linear layer's weight ``(C, H)``.  ``x`` then holds the features
        ``(..., H)`` and the logits are ``x @ kwargs[linear].T`` (plus a
        bias): the classes are that array's rows (arrays of kind
        ``"classes"`` line up with them, entry by entry or row by row), and
        ``axis`` is the feature axis of ``x`` (the last), which the row
        shrinking leaves alone as it leaves a class axis alone.  None for
        every other loss.
    ``class_multiple``
        The number of classes must stay a multiple of this (default 1: any
        number).  A function that splits the class axis into ``k`` equal
        shards (Megatron-LM's tensor parallelism, ``k`` ranks) needs ``k``:
        the shrinker then drops ``k`` classes at a time and keeps at least
        ``k``.
    """

    loss: str = ""
    option_set: str = ""
    dtype: np.dtype | None = None
    region: str = ""
    index: int = 0
    seed: int = 0
    x: np.ndarray | None = None
    targets: np.ndarray | None = None
    kwargs: dict = field(default_factory=dict)
    v: np.ndarray | None = None
    kink: np.ndarray | None = None
    layout: Layout | None = field(default=None, repr=False)
    axis: int | None = field(default=None, kw_only=True)
    domain: str = field(default="logits", kw_only=True)
    target_kind: str | None = field(default=None, kw_only=True)
    arrays: dict = field(default_factory=dict, kw_only=True)
    fixed: frozenset = field(default=frozenset(), kw_only=True)
    ignore: str | None = field(default=None, kw_only=True)
    flags: tuple = field(default=(), kw_only=True)
    linear: str | None = field(default=None, kw_only=True)
    class_multiple: int = field(default=1, kw_only=True)

    def __post_init__(self):
        if self.x is None or self.targets is None:
            raise TypeError("a Case needs x and targets")
        self.x = np.asarray(self.x)
        self.targets = np.asarray(self.targets)
        if self.dtype is None:
            self.dtype = self.x.dtype if self.x.dtype.kind == "f" else np.dtype(np.float64)
        self.dtype = np.dtype(self.dtype)
        if self.axis is None and "axis" in self.kwargs and self.x.ndim:
            self.axis = int(self.kwargs["axis"]) % self.x.ndim
        self.fixed = frozenset(self.fixed)
        if self.linear is not None:
            if self.linear not in self.kwargs or np.ndim(self.kwargs[self.linear]) != 2:
                raise TypeError(f"a linear Case needs a 2-D array keyword {self.linear!r}")
            if self.x.ndim:
                self.axis = self.x.ndim - 1

    # ------------------------------------------------------------------ structure

    @property
    def batch_shape(self) -> tuple:
        """Shape of the per-example losses: ``x``'s shape without the class axis."""
        if self.axis is None:
            return self.x.shape
        return self.x.shape[:self.axis] + self.x.shape[self.axis + 1:]

    @property
    def index_targets(self) -> bool:
        """Class ids (any dtype) of the batch shape."""
        if self.axis is None:
            return False
        if self.target_kind is not None:
            return self.target_kind == "index"
        return self.targets.shape == self.batch_shape

    @property
    def row_targets(self) -> bool:
        """Target rows along the class axis (probabilities, one-hot, log-probabilities)."""
        return self.axis is not None and not self.index_targets

    @property
    def x_rows(self) -> bool:
        """``x`` holds (log-)probability rows along a class axis: edited only row-wise."""
        return self.axis is not None and self.domain in ("probs", "log_probs")

    @property
    def clip_bounds(self) -> tuple[float, float] | None:
        """``(eps, 1 - eps)`` as the reference forms them (in the case's dtype), or None."""
        eps = self.kwargs.get("eps")
        if eps is None:
            return None
        lo = self.dtype.type(eps)
        return float(lo), float(self.dtype.type(1) - lo)

    @property
    def n_classes(self) -> int | None:
        """The number of classes: the class axis of ``x``, the rows of the linear weight, or
        None for an elementwise loss."""
        if self.linear is not None:
            return int(np.shape(self.kwargs[self.linear])[0])
        return None if self.axis is None else int(self.x.shape[self.axis])

    @property
    def row_key(self) -> tuple:
        return (self.loss, self.option_set, self.dtype.name, self.region)

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ text

    def arguments(self, max_elems: int = 40) -> str:
        """``x=..., targets=..., key=value, ...``: exact values, copy-pasteable."""
        parts = [f"x={fmt_array(self.x, max_elems)}",
                 f"targets={fmt_array(self.targets, max_elems)}"]
        parts += [f"{k}={fmt_array(v, max_elems) if isinstance(v, np.ndarray) else repr(v)}"
                  for k, v in self.kwargs.items()]
        text = ", ".join(parts)
        if self.flags:
            text += " (" + ", ".join(self.flags) + ")"
        return text

    def describe(self, max_elems: int = 12) -> str:
        """The arguments; for a verifier case ``loss(arguments)  [row | case i, seed s]``."""
        if not self.loss:
            return self.arguments(max_elems)
        where = [p for p in (self.option_set, self.dtype.name, self.region) if p]
        where.append(f"case {self.index}, seed {self.seed}")
        return f"{self.loss}({self.arguments(max_elems)})  [{' | '.join(where)}]"

    def to_json(self) -> dict:
        """The arguments and provenance as strict JSON (non-finite floats as strings)."""
        return clean_json({
            "x": self.x, "targets": self.targets, "dtype": self.dtype.name,
            "kwargs": dict(self.kwargs), "region": self.region, "loss": self.loss,
            "option_set": self.option_set, "index": self.index, "seed": self.seed,
            "flags": list(self.flags)})


__all__ = ["ARRAY_KINDS", "Case", "Layout"]
