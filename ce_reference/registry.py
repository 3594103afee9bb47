"""The one registry of losses.

Tests, the verifier, the audit and the benchmarks all iterate :data:`LOSSES`,
so adding a loss means adding one :class:`LossSpec` here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from . import binary, categorical


@dataclass(frozen=True)
class LossSpec:
    """Everything the rest of the package needs to know about one loss.

    Attributes
    ----------
    name : str
        Public name (``ce_reference.<name>``; also the JAX twin's name).
    input : {"probs", "logits"}
        What the first argument is.
    kind : {"binary", "categorical"}
        Elementwise binary loss, or a loss over a class axis.
    options : tuple of str
        The keyword options the loss accepts, besides ``reduction``.
    value, grad, value_and_grad : callable
        The NumPy functions.
    """

    name: str
    input: str
    kind: str
    options: tuple[str, ...]
    value: Callable
    grad: Callable
    value_and_grad: Callable

    @property
    def jax(self) -> Callable:
        """The JAX twin (imports JAX on first use)."""
        return getattr(importlib.import_module("ce_reference.jax"), self.name)

    @property
    def hvp(self) -> Callable | None:
        """The hand-derived Hessian-vector product ``ce_reference.hvp.<name>_hvp``.

        ``None`` when the module (or the function) does not exist, so that the
        verifier can report its second-order oracle as not available.
        """
        try:
            module = importlib.import_module("ce_reference.hvp")
        except ModuleNotFoundError as exc:
            if exc.name != "ce_reference.hvp":
                raise                       # a broken import inside the module is an error
            return None
        return getattr(module, self.name + "_hvp", None)


def _spec(module, name, input, kind, options):
    return LossSpec(
        name=name, input=input, kind=kind, options=options,
        value=getattr(module, name),
        grad=getattr(module, name + "_grad"),
        value_and_grad=getattr(module, name + "_value_and_grad"),
    )


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        _spec(binary, "binary_cross_entropy", "probs", "binary", ("weight", "eps")),
        _spec(binary, "binary_cross_entropy_with_logits", "logits", "binary",
              ("weight", "pos_weight")),
        _spec(categorical, "categorical_cross_entropy", "probs", "categorical",
              ("axis", "weight", "eps")),
        _spec(categorical, "softmax_cross_entropy", "logits", "categorical",
              ("axis", "weight", "ignore_index", "label_smoothing")),
    )
}
