"""What the package knows about one loss: :class:`LossSpec`, its :class:`Option` s and oracles.

A loss is one unit.  Its module (``ce_reference.losses.<name>``) holds the
NumPy implementation and a :class:`LossSpec` named ``SPEC``; its independent
oracles (a JAX twin written from the definition, an mpmath oracle) live in
``ce_reference.oracles.<name>`` and are *found* through ``SPEC.oracle``, never
imported by the NumPy code.  Everything else -- the verifier, the audits, the
contract tests, the benchmarks, the command line -- reads the spec and never
dispatches on a loss's name.

This module is pure data: it imports nothing of the package, so every layer
can use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

#: Domains of a loss's first argument.  The verifier draws values by domain;
#: ``features`` are the input of a linear layer (linear cross-entropy).
INPUT_DOMAINS = ("logits", "probs", "log_probs", "features")
#: ``elementwise``: one loss per element of the input (the binary losses);
#: ``classes``: one loss per row along a class axis ``axis`` (softmax, CCE, ...);
#: ``linear``: one loss per row of features ``(..., H)`` whose logits are
#: ``input @ linear_weight.T (+ linear_bias)``, the classes the rows of
#: ``linear_weight`` (the output head of a language model).
STRUCTURES = ("elementwise", "classes", "linear")
#: Kinds of targets.  Elementwise: ``hard`` (0/1) and ``soft`` (in [0, 1]).
#: Classes: ``index`` (integer class ids), ``onehot``, ``soft`` (probability
#: rows), ``log_soft`` (log-probability rows, ``-inf`` for a zero probability).
TARGET_KINDS = ("hard", "soft", "index", "onehot", "log_soft")


@dataclass(frozen=True)
class Option:
    """One keyword option of a loss.

    Attributes
    ----------
    name : str
        The keyword.
    default : object
        Its default (``None`` for an absent array option).
    array : bool
        An array argument (a weight): the JAX oracle passes it as a traced
        array, the audit's shrinker may simplify it.  Otherwise a static
        Python value (``axis``, ``label_smoothing``, ...).
    shape : {"scalar", "input", "last", "classes", "batch"}
        For array options: broadcast to the input (``input``), along its last
        axis (``last``, like PyTorch's ``pos_weight``), one entry per class
        (``classes``), or one entry per example (``batch``: the input's shape
        without the class axis, like the JSD's row labels).
    validate : callable, optional
        The validator the loss's own code uses (documentation and audits can
        call it); it raises ``ValueError``/``TypeError`` naming the option.
    sample : callable, optional
        ``sample(rng, draw) -> value``: how the verifier draws the option when
        an option set uses it (``draw`` is a :class:`~ce_reference.options.Draw`).
    targets : bool
        The option changes the targets (``ignore_index`` marks rows); the
        verifier samples it while it draws the targets.
    invalid : tuple
        Invalid values and the error each must raise, ``(value, exception
        type)``; ``value`` may be a callable of the input ``x`` (e.g. a weight of
        the wrong shape).  The contract tests check that each is rejected with a
        message naming the option.
    own_mean : bool
        When set (to anything but its default), the option adds a term with a
        ``mean`` denominator of its own (the z-loss: kept rows, not target
        weights), so ``mean`` is no longer ``sum`` times one scale.
    """

    name: str
    default: Any = None
    array: bool = False
    shape: str = "scalar"
    validate: Callable | None = None
    sample: Callable | None = None
    targets: bool = False
    invalid: tuple = ()
    own_mean: bool = False


@dataclass(frozen=True)
class OptionSet:
    """A family of verifier rows: a target kind, some options, the input regions."""

    name: str
    targets: str
    options: frozenset = frozenset()
    regions: tuple = ()


def option_set(name, targets, options=(), regions=()):
    """Shorthand for :class:`OptionSet` with plain sequences."""
    return OptionSet(name, targets, frozenset(options), tuple(regions))


@dataclass(frozen=True)
class BenchCase:
    """One benchmark case of a loss (``python -m benchmarks`` iterates the registry).

    ``shape`` of the first argument (class axis last; a linear loss: ``(N, H, V)``),
    ``targets`` kind, keyword ``options``; ``goals`` are ratios the fused kernel is
    held to, each ``(quantity, comparison, value)`` with quantity ``"floor"`` (fused
    time over the floor: ``np.copyto`` of the input, for a linear loss its three
    GEMMs) or a peer's name (peer time over fused time); ``compiled_goals`` the same
    for the compiled backend (``backend="numba"``, with ``out=``);
    ``sweep`` lists further shapes timed for the throughput plot (and, from the
    smallest, the per-call cost against the peers).
    """

    shape: tuple
    targets: str
    options: tuple = ()
    goals: tuple = ()
    sweep: tuple = ()
    compiled_goals: tuple = ()

    @property
    def key(self) -> str:
        return "x".join(map(str, self.shape))


@dataclass(frozen=True)
class Oracle:
    """The independent oracles of one loss (never importing its NumPy code).

    Attributes
    ----------
    twin : callable
        The JAX twin: the loss written from its definition, same signature
        as the NumPy value function; ``jax.grad`` of it is an oracle.
    exact : callable
        ``exact(mp, case) -> (losses, grads, denominator)`` at the current
        mpmath precision: per-example losses (a list in batch order), the
        gradient of their sum (an object array of ``mpf`` with the input's
        shape) and the ``mean`` denominator.
    exact_hvp : callable, optional
        ``exact_hvp(mp, case) -> (hv, denominator)``: the Hessian of the sum of
        the per-example losses applied to ``case.v`` (object array of ``mpf``).
    peers : callable, optional
        ``peers() -> {name: factory}``: other implementations of the loss (other
        libraries, textbook NumPy) for the benchmarks; ``factory(x, targets,
        workers, **options)`` returns a zero-argument callable computing the loss
        and its gradient, or None when its library is not installed.
    operands : callable
        ``operands(case, v) -> Operands``: the size of the terms each exact
        value / gradient / H v element is made of (the error unit).
    extreme : callable
        ``extreme(case) -> bool``: inputs for which the exact evaluation is
        repeated at a much higher precision.
    """

    twin: Callable
    exact: Callable
    operands: Callable
    extreme: Callable
    exact_hvp: Callable | None = None
    peers: Callable | None = None


@dataclass(frozen=True)
class LossSpec:
    """Everything the rest of the package needs to know about one loss.

    Attributes
    ----------
    name : str
        Public name (``ce_reference.<name>``; the JAX twin has the same name).
    input : {"logits", "probs", "log_probs"}
        Domain of the first argument.
    structure : {"elementwise", "classes", "linear"}
        Shape of the per-example result: the input's shape, the input's
        shape without the class axis ``axis``, or (``linear``) without the
        feature axis (the last).
    targets : tuple of str
        Target kinds the loss accepts (see :data:`TARGET_KINDS`).
    options : tuple of :class:`Option`
        Keyword options besides ``reduction``, in signature order.
    option_sets : tuple of :class:`OptionSet`
        The rows the verifier sweeps.
    value, grad, value_and_grad : callable
        The NumPy functions ``NAME``, ``NAME_grad``, ``NAME_value_and_grad``.
    hvp : callable, optional
        ``NAME_hvp(x, targets, v, **options)``; ``None`` for a loss without one.
    complex_value : callable, optional
        ``complex_value(z, targets, **options)``: each example's contribution
        to the reduced loss, evaluated by the loss's own formulas at a complex
        input (the complex-step oracle); ``None`` where the loss is not analytic.
    oracle : Oracle or str
        The independent oracles, or ``"module:attribute"`` naming them
        (imported on first use).
    reductions : tuple of str
        Accepted ``reduction`` values, the default first.
    wrt : tuple of str
        The differentiable arguments (``"input"`` is the first argument, the
        others are keywords of the case); ``grad`` returns one array per entry
        (a tuple when there are several; None for an absent optional one).
    positional : tuple of str
        How a case is passed: the positional parameters, ``"input"`` (the
        case's ``x``), ``"targets"``, or a keyword of the case (linear
        cross-entropy: ``("input", "linear_weight", "targets")``).
    dtype_policy : {"package", "exact"}
        ``package``: the package's dtype policy (float16 computed in float32,
        returned as float16); ``exact``: float16 and bfloat16 are computed and
        returned in float64 (a reference for low-precision kernels).
    benchmarks : tuple of :class:`BenchCase`
        The cases ``python -m benchmarks`` times for this loss.
    backends : tuple of str
        The kernels ``value_and_grad`` can run on (``"numpy"``, ``"numba"``: see
        :mod:`ce_reference.backends`).  A loss with more than one takes
        ``backend=``; the verifier gates each against mpmath in its own column
        (``fused``, ``compiled``) and the contract tests run on each.
    short : str
        Short label for tables.
    ref : str, optional
        ``"module:attribute"`` where this spec can be imported (process pools
        and cluster workers rebuild it from this).
    """

    name: str
    input: str
    structure: str
    targets: tuple
    options: tuple
    option_sets: tuple
    value: Callable
    grad: Callable
    value_and_grad: Callable
    hvp: Callable | None = None
    complex_value: Callable | None = None
    oracle: Any = None
    reductions: tuple = ("mean", "sum", "none")
    wrt: tuple = ("input",)
    positional: tuple = ("input", "targets")
    dtype_policy: str = "package"
    benchmarks: tuple = ()
    backends: tuple = ("numpy",)
    short: str = ""
    ref: str | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.input not in INPUT_DOMAINS:
            raise ValueError(f"input must be one of {INPUT_DOMAINS}, got {self.input!r}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        unknown = [t for t in self.targets if t not in TARGET_KINDS]
        if unknown:
            raise ValueError(f"unknown target kind {unknown[0]!r}; expected {TARGET_KINDS}")
        names = [o.name for o in self.options]
        for s in self.option_sets:
            if s.targets not in self.targets:
                raise ValueError(f"option set {s.name!r} uses target kind {s.targets!r}, "
                                 f"not one of {self.name}'s {self.targets}")
            extra = set(s.options) - set(names)
            if extra:
                raise ValueError(f"option set {s.name!r} uses unknown option(s) {sorted(extra)}")

    def call(self, fn, case, *extra, **override):
        """``fn`` applied to ``case`` as this loss's functions take it (see ``positional``);
        ``extra`` positionals follow (an HVP's direction), ``override`` replaces keywords."""
        kwargs = {**case.kwargs, **override}
        args = [case.x if name == "input" else case.targets if name == "targets"
                else kwargs.pop(name) for name in self.positional]
        return fn(*args, *extra, **kwargs)

    def grad_parts(self, grad) -> tuple:
        """The gradient as one array per ``wrt`` entry (None for an absent optional one)."""
        return (grad,) if len(self.wrt) == 1 else tuple(grad)

    def wrt_arrays(self, case) -> tuple:
        """The case's arrays the loss is differentiated with respect to (``wrt`` order)."""
        return tuple(case.x if name == "input" else case.kwargs.get(name) for name in self.wrt)

    @property
    def array_keywords(self) -> tuple:
        """Keywords of a case holding arrays: positional arrays other than the input and
        the targets (``linear_weight``), then the array options."""
        return tuple(n for n in self.positional if n not in ("input", "targets")) + tuple(
            o.name for o in self.options if o.array)

    @property
    def option_names(self) -> tuple:
        """The option keywords (signature order), without ``reduction``."""
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    @property
    def label(self) -> str:
        return self.short or self.name

    def resolve_oracle(self) -> Oracle | None:
        """The :class:`Oracle` (importing ``module:attribute`` on first use)."""
        if isinstance(self.oracle, str):
            if "oracle" not in self._cache:
                self._cache["oracle"] = load(self.oracle)
            return self._cache["oracle"]
        return self.oracle

    @property
    def twin(self) -> Callable:
        """The JAX twin (imports JAX on first use)."""
        return self.resolve_oracle().twin


def load(ref: str):
    """Import ``"module:attribute"`` (dotted attributes allowed) and return the object."""
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f"expected 'module:attribute', got {ref!r}")
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
