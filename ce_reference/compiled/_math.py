r"""Branch-free, vectorisable float32 / float64 elementary functions for the kernels.

Every function here is a small numba function (``error_model="numpy"``) that
LLVM inlines into the calling loop, plus a dtype-dispatching ``overload``
(``exp_nonpos(x)`` picks ``exp_nonpos_f32`` or ``exp_nonpos_f64`` by the type of
``x``).  They are written so that the loop vectoriser turns a loop of calls
into SIMD code: no branches (selections are ``a if c else b`` on values, which
become blends), no calls into libm, no float-to-int conversions (the exponent
is taken from the bits of a "magic number" sum), integer work in the float's
own width.  (Numba-level ``inline="always"`` was measured to give the same
machine code, with slower compiles and spurious ``NumbaIRAssumptionWarning``s.)

Functions (``T`` = float32 or float64, all arguments of one type):

``exp_nonpos(x)``
    ``e^x`` for ``x <= 0`` (``-inf`` -> 0, NaN -> NaN).  Cody--Waite
    reduction ``x = n ln2 + r``, ``|r| <= ln2/2``, with ``ln2`` split in a
    high part with trailing zeros (``n ln2_hi`` exact) and a low part applied
    by fma; ``e^r = 1 + (r + r^2 P(r))`` with ``P`` a minimax polynomial
    (degree 4 for float32, 9 for float64; ``tools/fit_minimax.py``) in Estrin
    form, the last step an fma; the scale ``2^n`` built from bits as
    ``2^(n + K) * 2^-K`` so that a subnormal result is rounded once.
    Arguments below ``-104`` (float32) / ``-746`` (float64) give 0, the
    correctly rounded result.
``exp_expm1_nonpos(x)``
    ``(e^x, e^x - 1)`` from one reduction: ``expm1 = 2^n q + (2^n - 1)`` with
    ``q = r + r^2 P(r)``, one fma; no cancellation for ``x <= 0``.
``log_pos(x)``, ``log1p(u)``, ``log_plus(w, c)``
    ``log x`` for ``x >= 0`` (0 -> -inf, +inf -> +inf, NaN -> NaN) and
    ``log1p u`` for ``u >= -1``; fdlibm's reduction ``x = 2^k (1 + f)``,
    ``sqrt(2)/2 <= 1 + f < sqrt(2)``, ``s = f / (2 + f)``, ``log(1+f) =
    f - hfsq + s (hfsq + R(s^2))``; ``log1p`` forms ``w = fl(1 + u)`` and adds
    the rounding error ``(u - (w - 1)) / w`` as a low-order term.
``tanh_sech2(u)``, ``softcap(x, s, 1/s)``
    ``(tanh u, sech^2 u)`` for any real ``u``: with ``a = |u|``,
    ``em = expm1(-2a)``, ``e = exp(-2a)``: ``tanh a = -em / (1 + e)``,
    ``sech^2 a = 4 e / (1 + e)^2`` (one division, corrected by fma); both
    without cancellation (``sech^2`` is never ``1 - tanh^2``).  ``softcap``
    returns ``(s tanh(x / s), sech^2(x / s))`` with ``-inf`` kept and the
    rounding of ``x / s`` carried as a correction term.

Accuracy, measured by ``tests/test_compiled_math.py`` (float32: every float32 of
the range, the slow tests; float64: 10^7 random arguments against long double,
the worst re-checked with mpmath at 60 digits, plus structured hard cases):

==================  ==========  =================  ==========
function            float32     range              float64
==================  ==========  =================  ==========
exp                 0.891 ULP   [-104, 0]          0.953 ULP
expm1               0.938 ULP   [-30, 0]           --
log1p               0.863 ULP   [0, 1]             0.833 ULP
log1p               0.829 ULP   [-1, 0]
log                 0.829 ULP   (0, 1]             0.833 ULP
tanh                2.23 ULP    [0, 20]            2.07 ULP
sech^2              2.78 ULP    [0, 60]            2.66 ULP
==================  ==========  =================  ==========
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# --------------------------------------------------------------------------- intrinsics


@intrinsic
def _f32_bits(typingctx, x):
    """Bits of a float32 as int32 (LLVM bitcast)."""
    if x != types.float32:
        return None
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return sig, codegen


@intrinsic
def _bits_f32(typingctx, i):
    """Float32 whose bits are the low 32 bits of an integer (trunc + bitcast)."""
    if not isinstance(i, types.Integer):
        return None
    sig = types.float32(i)

    def codegen(context, builder, signature, args):
        v = args[0]
        if i.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return sig, codegen


@intrinsic
def _f64_bits(typingctx, x):
    if x != types.float64:
        return None
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return sig, codegen


@intrinsic
def _bits_f64(typingctx, i):
    if not isinstance(i, types.Integer) or i.bitwidth != 64:
        return None
    sig = types.float64(i)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return sig, codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma``: vfmadd on FMA3 hardware)."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None
    sig = a(a, a, a)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return sig, codegen


# --------------------------------------------------------------------------- exp

_LOG2E = 1.4426950408889634
# float32: ln2 = LN2_HI + LN2_LO, LN2_HI with 12 trailing zero bits (n * LN2_HI exact)
_LN2_HI_F = np.float32(0.693145751953125)           # 0x3f317200
_LN2_LO_F = np.float32(1.428606765330187e-06)       # 0x35bfbe8e
_MAGIC_F = np.float32(12582912.0)                   # 1.5 * 2^23: round-to-int by addition
_MAGIC_F_BITS = np.int32(0x4B400000)
# e^r = 1 + r + r^2 P(r), |r| <= ln2/2; Remez, relative error 3.1e-9 (0.05 half-ULP)
_PF0 = np.float32(0.49999994)
_PF1 = np.float32(0.16666521)
_PF2 = np.float32(0.04166839)
_PF3 = np.float32(0.00836871)
_PF4 = np.float32(0.0013814613)
_LO_F = np.float32(-104.0)      # exp(-104) < 2^-150: rounds to 0
_SCALE_K_F = 64                 # 2^(n + 64) is normal for n >= -150
_TWO_M64_F = np.float32(2.0 ** -64)


@njit(error_model="numpy")
def _exp_reduce_f32(x):
    """(q, 2^(n + 64)) with e^x = 2^n (1 + q), x clamped to [-104, 0]."""
    x = _LO_F if x < _LO_F else x                          # keeps NaN
    kf = fma(x, np.float32(_LOG2E), _MAGIC_F)              # n + 1.5*2^23, rounded
    n = _f32_bits(kf) - _MAGIC_F_BITS                      # n as int32 (garbage for NaN)
    nf = kf - _MAGIC_F                                     # n as float32, exact
    rh = fma(nf, -_LN2_HI_F, x)                            # exact
    lo = nf * -_LN2_LO_F
    r = rh + lo                                            # reduced argument (rounded)
    r2 = r * r
    P = (_PF0 + _PF1 * r) + r2 * ((_PF2 + _PF3 * r) + r2 * _PF4)
    q = rh + fma(r2, P, lo)                                # e^r - 1, one rounding on rh
    sc = _bits_f32((n + np.int32(127 + _SCALE_K_F)) << np.int32(23))   # 2^(n + 64)
    return q, sc


@njit(error_model="numpy")
def exp_nonpos_f32(x):
    q, sc = _exp_reduce_f32(x)
    return fma(sc, q, sc) * _TWO_M64_F


@njit(error_model="numpy")
def exp_expm1_nonpos_f32(x):
    q, sc = _exp_reduce_f32(x)
    s = sc * _TWO_M64_F                                    # 2^n (0 or subnormal below -126)
    e = ((np.float32(1.0) + q) * sc) * _TWO_M64_F
    em = fma(s, q, s - np.float32(1.0))
    return e, em


_LN2_HI_D = 6.93147180369123816490e-01               # 0x3fe62e42fee00000 (fdlibm)
_LN2_LO_D = 1.90821492927058770002e-10               # 0x3dea39ef35793c76
_MAGIC_D = 6755399441055744.0                       # 1.5 * 2^52
_MAGIC_D_BITS = np.int64(0x4338000000000000)
# e^r = 1 + r + r^2 P(r), |r| <= ln2/2; Remez, relative error 3.6e-18 (0.03 half-ULP)
_PD = (0.5000000000000011, 0.16666666666666413, 0.041666666666530267, 0.008333333333494333,
       0.001388888894359767, 0.000198412695067809, 2.480149313621709e-05,
       2.7557586265326313e-06, 2.763023390815819e-07, 2.5000072631107562e-08)
_PD0, _PD1, _PD2, _PD3, _PD4, _PD5, _PD6, _PD7, _PD8, _PD9 = _PD
_LO_D = -746.0                # exp(-746) < 2^-1075: rounds to 0
_SCALE_K_D = 512              # 2^(n + 512) is normal for n >= -1077
_TWO_M512_D = 2.0 ** -512


@njit(error_model="numpy")
def _exp_reduce_f64(x):
    x = _LO_D if x < _LO_D else x
    kf = fma(x, _LOG2E, _MAGIC_D)
    n = _f64_bits(kf) - _MAGIC_D_BITS
    nf = kf - _MAGIC_D
    rh = fma(nf, -_LN2_HI_D, x)
    lo = nf * -_LN2_LO_D
    r = rh + lo
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    P = (((_PD0 + _PD1 * r) + r2 * (_PD2 + _PD3 * r))
         + r4 * ((_PD4 + _PD5 * r) + r2 * (_PD6 + _PD7 * r))
         + r8 * (_PD8 + _PD9 * r))
    q = rh + fma(r2, P, lo)
    sc = _bits_f64((n + np.int64(1023 + _SCALE_K_D)) << np.int64(52))
    return q, sc


@njit(error_model="numpy")
def exp_nonpos_f64(x):
    q, sc = _exp_reduce_f64(x)
    return fma(sc, q, sc) * _TWO_M512_D


@njit(error_model="numpy")
def exp_expm1_nonpos_f64(x):
    q, sc = _exp_reduce_f64(x)
    s = sc * _TWO_M512_D
    e = ((1.0 + q) * sc) * _TWO_M512_D
    em = fma(s, q, s - 1.0)
    return e, em


# --------------------------------------------------------------------------- log

# float32 (musl logf; fdlibm's reduction and minimax R(s^2) on |s| <= 0.1716)
_LGF1 = np.float32(0.66666662693)       # 0xaaaaaa.0p-24
_LGF2 = np.float32(0.40000972152)       # 0xccce13.0p-25
_LGF3 = np.float32(0.28498786688)       # 0x91e9ee.0p-25
_LGF4 = np.float32(0.24279078841)       # 0xf89e26.0p-26
_LN2H_LOG_F = np.float32(6.9313812256e-01)   # 0x3f317180
_LN2L_LOG_F = np.float32(9.0580006145e-06)   # 0x3717f7d1
_TWO23_F = np.float32(8388608.0)
_TWO25_F = np.float32(33554432.0)
_TINY_F = np.float32(1.1754943508222875e-38)     # 2^-126


@njit(error_model="numpy")
def _log_core_f32(x, c):
    """``log(x) + c`` for finite ``x > 0`` (subnormals included), ``|c|`` tiny."""
    sub = x < _TINY_F
    x = x * _TWO25_F if sub else x
    ix = _f32_bits(x) + np.int32(0x3F800000 - 0x3F3504F3)
    # k = exponent of ix - 127, as a float via bits (no int -> float conversion)
    kf = _bits_f32(((ix >> np.int32(23)) & np.int32(0xFF)) | np.int32(0x4B000000)) - _TWO23_F
    kf = kf - (np.float32(127.0 + 25.0) if sub else np.float32(127.0))
    f = _bits_f32((ix & np.int32(0x007FFFFF)) + np.int32(0x3F3504F3)) - np.float32(1.0)
    s = f / (np.float32(2.0) + f)
    z = s * s
    w = z * z
    R = z * (_LGF1 + w * _LGF3) + w * (_LGF2 + w * _LGF4)
    hfsq = np.float32(0.5) * f * f
    return s * (hfsq + R) + (kf * _LN2L_LOG_F + c) - hfsq + f + kf * _LN2H_LOG_F


@njit(error_model="numpy")
def log_pos_f32(x):
    """``log x`` for ``x >= 0``: 0 -> -inf, +inf -> +inf, NaN -> NaN."""
    v = _log_core_f32(x, np.float32(0.0))
    v = v if x < np.float32(np.inf) else x                 # +inf, NaN
    return v if x != np.float32(0.0) else np.float32(-np.inf)


@njit(error_model="numpy")
def log1p_f32(u):
    """``log(1 + u)`` for ``u >= -1`` (-1 -> -inf, +inf -> +inf, NaN -> NaN)."""
    w = np.float32(1.0) + u
    c = (u - (w - np.float32(1.0))) / w                   # rounding error of 1 + u, / w
    v = _log_core_f32(w, c)
    v = v if w < np.float32(np.inf) else w
    return v if w != np.float32(0.0) else np.float32(-np.inf)


# float64 (fdlibm e_log.c)
_LGD1 = 6.666666666666735130e-01
_LGD2 = 3.999999999940941908e-01
_LGD3 = 2.857142874366239149e-01
_LGD4 = 2.222219843214978396e-01
_LGD5 = 1.818357216161805012e-01
_LGD6 = 1.531383769920937332e-01
_LGD7 = 1.479819860511658591e-01
_TWO52_D = 4503599627370496.0
_TWO54_D = 18014398509481984.0
_TINY_D = 2.2250738585072014e-308


@njit(error_model="numpy")
def _log_core_f64(x, c):
    sub = x < _TINY_D
    x = x * _TWO54_D if sub else x
    ix = _f64_bits(x) + np.int64(0x3FF0000000000000 - 0x3FE6A09E00000000)
    kf = _bits_f64(((ix >> np.int64(52)) & np.int64(0x7FF)) | np.int64(0x4330000000000000)) - _TWO52_D
    kf = kf - (1023.0 + 54.0 if sub else 1023.0)
    f = _bits_f64((ix & np.int64(0x000FFFFFFFFFFFFF)) + np.int64(0x3FE6A09E00000000)) - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LGD2 + w * (_LGD4 + w * _LGD6))
    t2 = z * (_LGD1 + w * (_LGD3 + w * (_LGD5 + w * _LGD7)))
    R = t2 + t1
    hfsq = 0.5 * f * f
    return s * (hfsq + R) + (kf * _LN2_LO_D + c) - hfsq + f + kf * _LN2_HI_D


@njit(error_model="numpy")
def log_pos_f64(x):
    v = _log_core_f64(x, 0.0)
    v = v if x < np.inf else x
    return v if x != 0.0 else -np.inf


@njit(error_model="numpy")
def log1p_f64(u):
    w = 1.0 + u
    c = (u - (w - 1.0)) / w
    v = _log_core_f64(w, c)
    v = v if w < np.inf else w
    return v if w != 0.0 else -np.inf


# --------------------------------------------------------------------------- tanh, sech^2

@njit(error_model="numpy")
def _tanh_sech2_lo_f32(u, ulo):
    """``(tanh(u + ulo), sech^2(u + ulo))`` for a tiny correction ``ulo``.

    With ``a = |u|``, ``e = e^{-2a}``, ``em = e - 1`` (both from one reduction),
    ``D = 1 + e`` split as ``Dh + Dl`` exactly, ``rd = fl(1 / Dh)`` and
    ``eps = 1 - D rd`` (by fma): ``1/D = rd (1 + eps)``, so ``tanh a = -em rd (1 + eps)``
    and ``sech^2 a = 4 e rd^2 (1 + 2 eps)`` with one division.  The correction
    enters to first order: ``e^{-2(a + alo)} = e (1 - 2 alo)`` in ``sech^2`` and
    ``tanh += sech^2 ulo``.
    """
    a = abs(u)
    alo = ulo if u >= np.float32(0.0) else -ulo
    e, em = exp_expm1_nonpos_f32(np.float32(-2.0) * a)
    one = np.float32(1.0)
    dh = one + e
    dl = e - (dh - one)                                    # exact (Fast2Sum, e <= 1)
    rd = one / dh
    eps = -(fma(dh, rd, -one) + dl * rd)                   # 1 - D rd
    th = -em * rd
    th = fma(th, eps, th)
    ec = fma(e, np.float32(-2.0) * alo, e)
    b = (np.float32(4.0) * ec) * rd * rd
    s2 = fma(b, eps + eps, b)
    th = fma(alo, s2, th)
    th = th if u >= np.float32(0.0) else -th               # NaN stays NaN
    return th, s2


@njit(error_model="numpy")
def _tanh_sech2_lo_f64(u, ulo):
    a = abs(u)
    alo = ulo if u >= 0.0 else -ulo
    e, em = exp_expm1_nonpos_f64(-2.0 * a)
    dh = 1.0 + e
    dl = e - (dh - 1.0)
    rd = 1.0 / dh
    eps = -(fma(dh, rd, -1.0) + dl * rd)
    th = -em * rd
    th = fma(th, eps, th)
    ec = fma(e, -2.0 * alo, e)
    b = (4.0 * ec) * rd * rd
    s2 = fma(b, eps + eps, b)
    th = fma(alo, s2, th)
    th = th if u >= 0.0 else -th
    return th, s2


@njit(error_model="numpy")
def tanh_sech2_f32(u):
    """``(tanh u, sech^2 u)``; ``tanh(+-inf) = +-1``, ``sech^2(+-inf) = 0``, NaN -> NaN."""
    return _tanh_sech2_lo_f32(u, np.float32(0.0))


@njit(error_model="numpy")
def tanh_sech2_f64(u):
    return _tanh_sech2_lo_f64(u, 0.0)


@njit(error_model="numpy")
def softcap_f32(x, s, inv_s):
    """``(s tanh(x / s), sech^2(x / s))`` with ``-inf`` kept (a masked class).

    ``u = x (1/s)`` is rounded (twice); the exact remainder ``x - u s`` (one fma) is
    carried as ``ulo = (x - u s) (1/s)`` into :func:`_tanh_sech2_lo_f32`, so
    ``u + ulo`` is ``x / s`` to about ``eps^2`` and ``sech^2`` keeps its relative
    accuracy for large ``|x / s|`` (where it is ``~ 4 e^{-2|x|/s}`` and an argument
    error ``delta`` would cost ``2 |x / s| delta`` relative).
    """
    u = x * inv_s
    ulo = fma(-u, s, x) * inv_s
    ulo = ulo if ulo == ulo else np.float32(0.0)          # x = +-inf: no correction
    th, s2 = _tanh_sech2_lo_f32(u, ulo)
    y = s * th
    return (x if x == np.float32(-np.inf) else y), s2


@njit(error_model="numpy")
def softcap_f64(x, s, inv_s):
    u = x * inv_s
    ulo = fma(-u, s, x) * inv_s
    ulo = ulo if ulo == ulo else 0.0
    th, s2 = _tanh_sech2_lo_f64(u, ulo)
    y = s * th
    return (x if x == -np.inf else y), s2


# --------------------------------------------------------------------------- dtype dispatch

def exp_nonpos(x):
    """``e^x`` for ``x <= 0`` in the dtype of ``x`` (see the module docstring)."""
    raise NotImplementedError("numba only")


def exp_expm1_nonpos(x):
    raise NotImplementedError("numba only")


def log_pos(x):
    raise NotImplementedError("numba only")


def log1p(u):
    raise NotImplementedError("numba only")


def tanh_sech2(u):
    raise NotImplementedError("numba only")


def softcap(x, s, inv_s):
    """``(s tanh(x / s), sech^2(x / s))``, ``-inf`` kept (see :func:`softcap_f32`)."""
    raise NotImplementedError("numba only")


@overload(softcap)
def _ov_softcap(x, s, inv_s):
    if x == s == inv_s == types.float32:
        return lambda x, s, inv_s: softcap_f32(x, s, inv_s)
    if x == s == inv_s == types.float64:
        return lambda x, s, inv_s: softcap_f64(x, s, inv_s)
    return None


def log_plus(x, c):
    """``log(x) + c`` for finite ``x > 0`` and a tiny correction ``c`` (added before the
    last roundings): ``log1p(u) = log_plus(w, (u - (w - 1)) / w)`` with ``w = fl(1 + u)``."""
    raise NotImplementedError("numba only")


@overload(log_plus)
def _ov_log_plus(x, c):
    if x == types.float32 and c == types.float32:
        return lambda x, c: _log_core_f32(x, c)
    if x == types.float64 and c == types.float64:
        return lambda x, c: _log_core_f64(x, c)
    return None


def _dispatch(generic, f32, f64):
    @overload(generic)
    def _ov(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        return None


_dispatch(exp_nonpos, exp_nonpos_f32, exp_nonpos_f64)
_dispatch(exp_expm1_nonpos, exp_expm1_nonpos_f32, exp_expm1_nonpos_f64)
_dispatch(log_pos, log_pos_f32, log_pos_f64)
_dispatch(log1p, log1p_f32, log1p_f64)
_dispatch(tanh_sech2, tanh_sech2_f32, tanh_sech2_f64)


# --------------------------------------------------------------------------- small helpers

def _binary_intrinsic(llvm_name, doc):
    @intrinsic
    def f(typingctx, a, b):
        if not (a == b and a in (types.float32, types.float64)):
            return None
        sig = a(a, a)

        def codegen(context, builder, signature, args):
            ty = args[0].type
            fn = builder.module.declare_intrinsic(llvm_name, [ty], ir.FunctionType(ty, [ty, ty]))
            return builder.call(fn, args)
        return sig, codegen
    f.__doc__ = doc
    return f


fmaximum = _binary_intrinsic(
    "llvm.maximum",
    "IEEE 754-2019 ``maximum``: NaN if either argument is NaN (``llvm.maximum``).  A loop "
    "reducing with it vectorises without fast-math flags, and a NaN anywhere makes the "
    "result NaN: the row maximum doubles as the NaN check.")


def as_dtype_of(arr, v):
    """``v`` converted to the dtype of the array (or float scalar) ``arr`` (numba only)."""
    raise NotImplementedError("numba only")


@overload(as_dtype_of)
def _as_dtype_of(arr, v):
    dt = arr.dtype if isinstance(arr, types.Array) else arr
    if dt == types.float32:
        return lambda arr, v: np.float32(v)
    if dt == types.float64:
        return lambda arr, v: np.float64(v)
    return None
