r"""Linear cross-entropy: softmax cross-entropy of ``input @ linear_weight.T + linear_bias``.

The loss of a language model's output head, computed without ever holding the
``N x V`` logits: rows are taken in chunks, each chunk's logits are formed by
one GEMM into a buffer that the fused softmax kernel then overwrites with
their gradient, and the three gradients are accumulated from it:

.. math::

    z = h W^{\mathsf T} + b,\qquad
    \frac{\partial L}{\partial h} = G W,\quad
    \frac{\partial L}{\partial W} = G^{\mathsf T} h,\quad
    \frac{\partial L}{\partial b} = \mathbf 1^{\mathsf T} G,
    \qquad G = \frac{\partial L}{\partial z},

``G`` the gradient of :func:`~ce_reference.softmax_cross_entropy` (every
option of that loss, with the whole batch's ``mean`` denominators).  Peak
memory beyond the returned gradients is one chunk of logits (at most
:data:`CHUNK_BYTES`) plus the kernel's scratch.

Dtypes: float32 ``input``, ``linear_weight`` (and ``linear_bias``) are
computed in float32 (GEMMs in float32, as a float32 model computes them) and
returned as float32.  Any other floating type -- float64, and float16 or
bfloat16 (ml_dtypes), which convert to float64 exactly -- is computed in
float64 and returned as float64: the exact answer that low-precision kernels
are judged against.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas

from .. import _validation as V
from .. import backends
from .. import options as O
from .._problem import deferred_values
from .._reduction import reduce_parts
from ..kernels import _blocks
from ..kernels import softmax as _kernel
from ..spec import BenchCase, LossSpec, Option, option_set
from . import softmax_cross_entropy as _softmax

__all__ = [
    "linear_cross_entropy",
    "linear_cross_entropy_grad",
    "linear_cross_entropy_value_and_grad",
]

#: Bytes of logits per chunk by default: the chunk's logits (which become its
#: gradient in place) plus the softmax kernel's per-thread scratch
#: (:data:`ce_reference.kernels._blocks.SCRATCH_BUDGET`, 24 MiB) stay within 64 MiB.
CHUNK_BYTES = 32 * 1024 * 1024


def _as_float(name, value):
    """A real numeric array: float16/32/64, integers, or ml_dtypes' bfloat16."""
    if isinstance(value, np.ndarray) and value.dtype.name == "bfloat16":
        return value
    return V.as_numeric_array(name, value)


def _compute_dtype(*arrays):
    """float32 when every floating argument is float32, float64 otherwise."""
    return np.dtype(np.float32) if all(a.dtype == np.float32 for a in arrays if a is not None) \
        else np.dtype(np.float64)


class _LinearProblem:
    """Validated arguments of a linear cross-entropy call (see :func:`linear_cross_entropy`)."""

    def __init__(self, input, linear_weight, targets, linear_bias, weight, ignore_index,
                 label_smoothing, z_loss, softcap, reduction, chunk_size, check_values=True):
        h = _as_float("input", input)
        W = _as_float("linear_weight", linear_weight)
        b = None if linear_bias is None else _as_float("linear_bias", linear_bias)
        if h.ndim < 1:
            raise ValueError("input must have at least one dimension (..., H), got a scalar")
        if W.ndim != 2 or W.shape[1] != h.shape[-1]:
            raise ValueError(f"linear_weight must have shape (V, H) with H = input.shape[-1] = "
                             f"{h.shape[-1]}, got {W.shape}")
        if W.shape[0] == 0:
            raise ValueError("linear_weight has no rows: expected at least one class")
        if b is not None and b.shape != (W.shape[0],):
            raise ValueError(f"linear_bias must have shape ({W.shape[0]},), got {b.shape}")
        self.cdt = _compute_dtype(h, W, b)
        self.rdt = self.cdt
        # C-contiguous in the compute dtype (a copy only when the caller's is not): the
        # GEMMs take their Fortran views without copying
        self.h = np.ascontiguousarray(h.reshape(-1, h.shape[-1]), dtype=self.cdt)
        self.W = np.ascontiguousarray(W, dtype=self.cdt)
        self.b = None if b is None else b.astype(self.cdt, copy=False)
        self.input_shape, self.weight_shape = h.shape, W.shape
        self.has_bias = b is not None
        if check_values:
            self.check_values()
        self.N, self.V = self.h.shape[0], self.W.shape[0]
        t = V.as_numeric_array("targets", targets)
        if t.dtype.kind not in "iu":
            if t.shape != h.shape[:-1] + (self.V,):
                raise ValueError(f"targets holds probabilities (non-integer dtype), so its shape "
                                 f"must be input.shape[:-1] + (V,) = {h.shape[:-1] + (self.V,)}, "
                                 f"got {t.shape}")
            t = t.reshape(self.N, self.V)
        elif t.shape != h.shape[:-1]:
            raise ValueError(f"targets holds class indices (integer dtype), so its shape must be "
                             f"input.shape[:-1] = {h.shape[:-1]}, got {t.shape}")
        else:
            t = t.reshape(self.N)
        # The targets, weights, options and denominators of softmax cross-entropy over the
        # N x V logits, validated by that loss's own problem on a zero-stride stand-in (its
        # value checks would touch all N x V: the probability targets are checked here).
        logits = np.broadcast_to(np.zeros((), self.cdt), (self.N, self.V))
        self.softmax = _softmax._problem(logits, t, -1, weight, ignore_index, label_smoothing,
                                         z_loss, softcap, reduction, check_values=False)
        if check_values and t.dtype.kind not in "iu":
            V.check_unit_interval("targets", t, "probabilities / one-hot")
        self.reduction = self.softmax.reduction
        self.chunk = _chunk_rows(chunk_size, self.V, self.cdt)

    def check_values(self):
        """Finite ``input`` and ``linear_weight``; ``linear_bias`` finite or ``-inf`` (a
        masked class: its logit is ``-inf`` in every row and its probability 0)."""
        for name, a in (("input", self.h), ("linear_weight", self.W)):
            if a.size and not np.isfinite(np.max(np.abs(a))):
                raise ValueError(f"{name} contains NaN or inf; expected finite values")
        if self.b is not None and self.b.size and not np.max(self.b) < np.inf:
            raise ValueError("linear_bias contains NaN or +inf; expected finite values or "
                             "-inf (a masked class)")

    def logits(self, r0, r1, out):
        """The chunk's logits ``h[r0:r1] W^T + b`` into ``out`` (one GEMM)."""
        # out^T = W h^T on the Fortran views (out, h, W C-contiguous)
        gemm(out.T, self.W.T, self.h[r0:r1].T, trans_a=1)
        if self.b is not None:
            out += self.b
        return out

    def chunk_problem(self, r0, r1, logits):
        """Rows ``r0:r1`` as a softmax problem over ``logits`` (the batch's denominators)."""
        sub = self.softmax.block(slice(r0, r1), slice(0, 1))
        sub.raw = sub.x3 = logits.reshape(r1 - r0, self.V, 1)
        sub.__dict__.pop("x", None)
        return sub


def _chunk_rows(chunk_size, V, cdt) -> int:
    if chunk_size is None:
        return max(1, CHUNK_BYTES // (V * cdt.itemsize))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    return int(chunk_size)


def _problem(*args, check_values=True):
    return _LinearProblem(*args, check_values=check_values)


def _reduce(P, rows, z_rows):
    S = P.softmax
    if z_rows is None:
        value = S.reduce(rows)
    else:
        value = reduce_parts(((rows, S.denominator), (z_rows, S.z_denominator)), S.reduction,
                             S.rdt)
    return value.reshape(P.input_shape[:-1]) if S.reduction == "none" else value


_BLAS = {}


def _blas_threads(workers):
    """Limit BLAS to ``workers`` threads while the GEMMs run (threadpoolctl; its controller,
    which scans the loaded libraries, is made once)."""
    if "controller" not in _BLAS:
        from threadpoolctl import ThreadpoolController
        _BLAS["controller"] = ThreadpoolController()
    return _BLAS["controller"].limit(limits=workers, user_api="blas")


def gemm(c, a, b, *, beta=0.0, trans_a=0, trans_b=0):
    """``c = op(a) @ op(b) + beta c`` in place by BLAS ``gemm`` (no temporary).

    ``c``, ``a``, ``b`` are Fortran-contiguous (the transposes of C-contiguous
    arrays), so BLAS works on them where they are.  Every GEMM of the sweep goes
    through this one BLAS (SciPy's): alternating two OpenBLAS libraries (NumPy's
    for ``np.matmul``, SciPy's for the accumulation) left one library's threads
    spinning while the other's worked, measured 1.7x slower on two cores.
    """
    routine = blas.sgemm if c.dtype == np.float32 else blas.dgemm
    result = routine(1.0, a, b, beta=beta, c=c, trans_a=trans_a, trans_b=trans_b,
                     overwrite_c=1)
    if result is not c and not np.shares_memory(result, c):   # a copy was made after all
        c[...] = result


def _sweep(P, workers, want_grad):
    """Run every chunk: per-row losses (and z-loss rows) and, if asked, the gradients."""
    N, V, H, cdt = P.N, P.V, P.h.shape[1], P.cdt
    # float64: the compiled kernel's per-row losses are float64 (the NumPy kernel's,
    # in the compute dtype, are stored exactly)
    rows = np.empty(N, np.float64)
    z_rows = np.empty(N, np.float64) if P.softmax.z_loss else None
    d_input = d_weight = d_bias = None
    if want_grad:
        d_input = np.empty((N, H), cdt)
        d_weight = np.zeros((V, H), cdt)
        d_bias = np.zeros(V, np.float64) if P.has_bias else None
    buf = np.empty((min(P.chunk, N), V), cdt)
    with _blas_threads(workers):
        for r0 in range(0, N, P.chunk):
            r1 = min(N, r0 + P.chunk)
            logits = P.logits(r0, r1, buf[:r1 - r0])
            sub = P.chunk_problem(r0, r1, logits)
            if want_grad:
                grad = logits.reshape(r1 - r0, V, 1)            # the gradient, in place
                chunk_rows, chunk_z = _kernel.sweep(sub, grad, workers)
                G = logits                                     # d loss / d logits, scaled
                # d_input^T = W^T G^T and dW^T += h^T G, on the Fortran views
                gemm(d_input[r0:r1].T, P.W.T, G.T)
                gemm(d_weight.T, P.h[r0:r1].T, G.T, beta=1.0, trans_b=1)
                if d_bias is not None:
                    d_bias += np.sum(G, axis=0, dtype=np.float64)
            else:
                chunk_rows, chunk_z = _softmax._rows(sub, sub.x)
            rows[r0:r1] = chunk_rows.reshape(-1)
            if z_rows is not None:
                z_rows[r0:r1] = chunk_z.reshape(-1)
    value = _reduce(P, rows, z_rows)
    if not want_grad:
        return value, None
    grads = (d_input.reshape(P.input_shape), d_weight,
             None if d_bias is None else d_bias.astype(cdt))
    return value, grads


def linear_cross_entropy(input, linear_weight, targets, *, linear_bias=None, weight=None,
                         ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                         reduction="mean", chunk_size=None):
    r"""Softmax cross-entropy of the logits ``input @ linear_weight.T + linear_bias``.

    Exactly ``softmax_cross_entropy(input @ linear_weight.T + linear_bias, targets,
    weight=..., ignore_index=..., label_smoothing=..., z_loss=..., softcap=...,
    reduction=...)`` with the class axis last, computed in row chunks so that the
    ``N x V`` logits never exist at once (PyTorch 2.13's
    ``F.linear_cross_entropy``, Liger Kernel's fused linear cross-entropy and
    Apple's cut-cross-entropy compute this loss).

    Parameters
    ----------
    input : array_like, shape ``(..., H)``
        Hidden states :math:`h` (float32, float64, float16 or bfloat16).
    linear_weight : array_like, shape ``(V, H)``
        The output projection :math:`W`.
    targets : array_like
        Class indices of shape ``input.shape[:-1]`` (integer dtype), or
        probabilities of shape ``input.shape[:-1] + (V,)``.
    linear_bias : array_like of shape ``(V,)``, optional
        ``-inf`` entries mask their classes (probability 0 in every row).
    weight, ignore_index, label_smoothing, z_loss, softcap, reduction
        As in :func:`~ce_reference.softmax_cross_entropy` (PyTorch's conventions,
        except ``ignore_index=None``, which ignores nothing, as in every loss here;
        ``F.linear_cross_entropy`` maps its ``None`` to ``-100`` for index targets).
    chunk_size : int, optional
        Rows per chunk; default: as many as keep a chunk's logits within
        :data:`CHUNK_BYTES` (32 MiB).  The result does not depend on it beyond
        the rounding of the chunked sums (see ``docs/linear.md``).

    Returns
    -------
    loss : NumPy scalar, or array of ``input.shape[:-1]`` for ``"none"``
        float32 for float32 arguments, float64 otherwise (float16 and bfloat16
        are computed exactly in float64).

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> h = np.array([[1.0, 0.0], [0.0, 1.0]]); W = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> t = np.array([0, 2])
    >>> float(ce.linear_cross_entropy(h, W, t)) == float(ce.softmax_cross_entropy(h @ W.T, t))
    True
    """
    P = _problem(input, linear_weight, targets, linear_bias, weight, ignore_index,
                 label_smoothing, z_loss, softcap, reduction, chunk_size)
    return _sweep(P, _blocks.available_cores(), want_grad=False)[0]


def linear_cross_entropy_grad(input, linear_weight, targets, *, linear_bias=None, weight=None,
                              ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                              reduction="mean", chunk_size=None):
    r"""Gradients of :func:`linear_cross_entropy`: ``(d_input, d_linear_weight, d_linear_bias)``.

    With :math:`G = \partial L / \partial z` the gradient of softmax cross-entropy
    at the logits :math:`z = h W^{\mathsf T} + b` (every option; ``none``: of the
    sum),

    .. math::

        \frac{\partial L}{\partial h} = G W,\qquad
        \frac{\partial L}{\partial W} = G^{\mathsf T} h,\qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_n G_n,

    accumulated chunk by chunk (``d_linear_bias`` in float64, then rounded);
    ``d_linear_bias`` is None without a bias.  Same arguments as the loss.
    """
    return linear_cross_entropy_value_and_grad(
        input, linear_weight, targets, linear_bias=linear_bias, weight=weight,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, reduction=reduction, chunk_size=chunk_size)[1]


def linear_cross_entropy_value_and_grad(input, linear_weight, targets, *, linear_bias=None,
                                        weight=None, ignore_index=None, label_smoothing=0.0,
                                        z_loss=0.0, softcap=None, reduction="mean",
                                        chunk_size=None, workers=None, backend=None):
    """``(loss, (d_input, d_linear_weight, d_linear_bias))`` in one chunked sweep.

    ``workers``: threads of the softmax kernel and of BLAS (threadpoolctl), default
    all available cores.  For a fixed ``workers`` and ``chunk_size`` the results
    are the same bits on every run; across thread counts they differ by the
    rounding of multithreaded BLAS (measured in ``docs/linear.md``).
    ``backend``: the softmax kernel run on each chunk's logits, ``"numpy"`` or
    ``"numba"`` (compiled); default ``$CE_REFERENCE_BACKEND``, else ``"numba"`` when
    numba is installed (:mod:`ce_reference.backends`).  :func:`linear_cross_entropy_grad`
    uses the default.
    """
    nworkers = _blocks.resolve_workers(workers)
    backend = backends.resolve(backend)
    P = deferred_values(lambda check: _problem(
        input, linear_weight, targets, linear_bias, weight, ignore_index, label_smoothing,
        z_loss, softcap, reduction, chunk_size, check_values=check))
    P.check_values()
    P.softmax.backend = backend
    return _sweep(P, nworkers, want_grad=True)


def _sample_chunk_size(rng, draw):
    """No chunking, and chunks of 1, 2 and 3 rows (the last chunk short)."""
    return (None, 1, 2, 3)[draw.i % 4]


#: PyTorch's ``linear_bias``: one entry per class (``-inf`` masks the class).
LINEAR_BIAS = Option("linear_bias", None, array=True, shape="classes",
                     invalid=((lambda x: np.ones((2, 2)), ValueError),
                              (lambda x: np.array(["b"]), TypeError)))
CHUNK_SIZE = Option("chunk_size", None, sample=_sample_chunk_size,
                    invalid=((0, ValueError), (2.5, TypeError), (True, TypeError)))
_REGIONS = ("random", "extreme")
_EVERY = ("linear_bias", "chunk_size")

SPEC = LossSpec(
    name="linear_cross_entropy", input="features", structure="linear",
    targets=("index", "onehot", "soft"),
    options=(LINEAR_BIAS, O.CLASS_WEIGHT, O.IGNORE_INDEX, O.LABEL_SMOOTHING, _softmax.Z_LOSS,
             _softmax.SOFTCAP, CHUNK_SIZE),
    option_sets=(
        option_set("index", "index", ("chunk_size",), _REGIONS),
        option_set("index + bias", "index", _EVERY, _REGIONS),
        option_set("index + weight + ignore + smoothing + bias", "index",
                   ("weight", "ignore_index", "label_smoothing") + _EVERY, _REGIONS),
        option_set("index + z_loss + softcap + bias", "index",
                   ("z_loss", "softcap") + _EVERY, _REGIONS),
        option_set("soft (Dirichlet) + bias", "soft", _EVERY, _REGIONS),
        option_set("one-hot + weight + smoothing + z_loss + softcap", "onehot",
                   ("weight", "label_smoothing", "z_loss", "softcap", "chunk_size"), _REGIONS),
    ),
    value=linear_cross_entropy, grad=linear_cross_entropy_grad,
    value_and_grad=linear_cross_entropy_value_and_grad,
    oracle="ce_reference.oracles.linear_cross_entropy:ORACLE",
    wrt=("input", "linear_weight", "linear_bias"),
    positional=("input", "linear_weight", "targets"),
    dtype_policy="exact",
    # (N, H, V); the floor is the three GEMMs (benchmarks/linear.py)
    benchmarks=(BenchCase((2048, 512, 32768), "index",
                          goals=(("floor", "<=", 1.25), ("torch eager", ">", 1.0),
                                 ("torch linear_cross_entropy chunked", ">", 1.0)),
                          sweep=tuple((2048, 512, V) for V in (4096, 8192, 16384, 32768,
                                                               65536))),),
    backends=("numpy", "numba"),
    short="linear-CE", ref="ce_reference.losses.linear_cross_entropy:SPEC",
)
