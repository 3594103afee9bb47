"""Accuracy of the compiled elementary functions (ce_reference/compiled/_math.py).

Errors are in ULP of the exact result (float32: against float64 libm, whose own
error is ~2^-29 float32 ULP; float64: against numpy longdouble on dense samples,
the worst cases re-checked with mpmath at 60 digits, plus structured hard cases
against mpmath).  The exhaustive float32 sweeps (every float32 of the range,
~10^9 values each) are marked slow: ``python -m pytest -m slow
tests/test_compiled_math.py`` (a few minutes per function on one core).
"""

import math

import numpy as np
import pytest

numba = pytest.importorskip("numba")
mpmath = pytest.importorskip("mpmath")

from numba import njit  # noqa: E402

from ce_reference.compiled import _math as M  # noqa: E402
from ce_reference.compiled._math import _bits_f32  # noqa: E402

# -------------------------------------------------------------------------- helpers


@njit(cache=False, error_model="numpy")
def _ulp32(v):
    v = abs(v)
    if v < 2.0 ** -126:
        return 2.0 ** -149
    e = math.floor(math.log2(v))
    if 2.0 ** e > v:
        e -= 1
    if 2.0 ** (e + 1) <= v:
        e += 1
    return 2.0 ** (e - 23)


@njit(cache=False, error_model="numpy")
def _ref64(which, xd):
    if which == 0:
        return math.exp(xd)
    if which == 1:
        return math.log1p(xd)
    if which == 2:
        return math.log(xd)
    if which == 3:
        return math.tanh(xd)
    if which == 4:
        return 1.0 / math.cosh(xd) ** 2
    return math.expm1(xd)


@njit(cache=False, error_model="numpy")
def _f32(which, x):
    if which == 0:
        return M.exp_nonpos(x)
    if which == 1:
        return M.log1p(x)
    if which == 2:
        return M.log_pos(x)
    if which == 3:
        return M.tanh_sech2(x)[0]
    if which == 4:
        return M.tanh_sech2(x)[1]
    return M.exp_expm1_nonpos(x)[1]


@njit(cache=False, error_model="numpy")
def _scan_bits(which, lo, hi, step):
    """Max ULP error over the float32 bit patterns lo, lo + step, ... < hi (int32 bits)."""
    worst = 0.0
    wx = np.float32(0.0)
    for b in range(lo, hi, step):
        bb = b - (1 << 32) if b >= (1 << 31) else b
        x = _bits_f32(np.int32(bb))
        got = np.float64(_f32(which, x))
        ref = _ref64(which, np.float64(x))
        if got == ref:
            continue
        e = abs(got - ref) / _ulp32(ref)
        if not (e <= worst):
            worst = e
            wx = x
    return worst, wx


def f32_bits(v):
    return int(np.array(v, np.float32).view(np.uint32))


EXP, LOG1P, LOG, TANH, SECH2, EXPM1 = range(6)
# (function, lo, hi, bound in ULP): the ranges the kernels use
F32_RANGES = {
    "exp[-104,0]": (EXP, -0.0, -104.0, 1.0),
    "log1p[0,1]": (LOG1P, 0.0, 1.0, 1.0),
    "log1p[-1,0]": (LOG1P, -0.0, -1.0, 1.0),
    "log(0,1]": (LOG, 1.4e-45, 1.0, 1.0),
    "expm1[-30,0]": (EXPM1, -0.0, -30.0, 1.0),
    "tanh[0,20]": (TANH, 0.0, 20.0, 2.5),
    "sech2[0,60]": (SECH2, 0.0, 60.0, 3.0),
}


def _range_bits(lo, hi):
    a, b = f32_bits(lo), f32_bits(hi)
    return min(a, b), max(a, b) + 1


# -------------------------------------------------------------------------- float32


@pytest.mark.parametrize("name", list(F32_RANGES))
def test_f32_sampled(name):
    """Every 97th float32 of the range (~10^7 values): within the bound."""
    which, lo, hi, bound = F32_RANGES[name]
    a, b = _range_bits(lo, hi)
    worst, wx = _scan_bits(which, a, b, 97)
    assert worst <= bound, (name, worst, wx)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(F32_RANGES))
def test_f32_exhaustive(name):
    """Every float32 of the range (exp: all 1.12e9 values in [-104, 0])."""
    which, lo, hi, bound = F32_RANGES[name]
    a, b = _range_bits(lo, hi)
    worst, wx = _scan_bits(which, a, b, 1)
    print(f"{name}: max {worst:.4f} ULP at {wx!r}")
    assert worst <= bound, (name, worst, wx)


def test_f32_exp_measured_bound():
    """The exhaustive float32 exp maximum (0.8913 ULP at -5.89088..., measured by the
    slow test) is reproduced at its argument: a regression guard that costs nothing."""
    x = np.float32(-5.8908820152282715)
    got = float(_f32(EXP, x))
    ref = math.exp(float(x))
    assert abs(got - ref) / _ulp32(ref) == pytest.approx(0.8913, abs=2e-4)


@njit(cache=False, error_model="numpy")
def _apply32(which, x, out):
    for i in range(x.size):
        out[i] = _f32(which, x[i])


def test_f32_special_values():
    x = np.array([0.0, -0.0, -np.inf, np.nan, -104.0, -103.97, -87.3, -88.72, -1e-30],
                 np.float32)
    e = np.empty_like(x)
    _apply32(EXP, x, e)
    assert e[0] == 1 and e[1] == 1 and e[2] == 0 and np.isnan(e[3]) and e[4] == 0
    assert e[5] == np.float32(np.exp(np.float64(x[5])))          # subnormal, rounded once
    assert e[8] == 1
    u = np.array([0.0, -1.0, np.inf, np.nan, 1e-30, 2.0 ** -126, 1e38], np.float32)
    out = np.empty_like(u)
    _apply32(LOG1P, u, out)
    assert out[0] == 0 and out[1] == -np.inf and out[2] == np.inf and np.isnan(out[3])
    assert out[4] == np.float32(1e-30) and out[5] == u[5]
    p = np.array([0.0, 1.0, np.inf, np.nan, 1.4e-45, 1e-40], np.float32)
    out = np.empty_like(p)
    _apply32(LOG, p, out)
    assert out[0] == -np.inf and out[1] == 0 and out[2] == np.inf and np.isnan(out[3])
    assert out[4] == np.float32(math.log(float(p[4])))
    assert out[5] == np.float32(math.log(float(p[5])))
    t = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 100.0], np.float32)
    th = np.empty_like(t)
    s2 = np.empty_like(t)
    _apply32(TANH, t, th)
    _apply32(SECH2, t, s2)
    assert th[0] == 1 and th[1] == -1 and np.isnan(th[2]) and th[3] == 0 and th[5] == 1
    assert s2[0] == 0 and s2[1] == 0 and np.isnan(s2[2]) and s2[3] == 1 and s2[5] == 0


# -------------------------------------------------------------------------- float64

mpmath.mp.dps = 60


def _ulp64_exact(v):
    """ULP of the float64 nearest the mpmath value v."""
    a = abs(float(v))
    if a < 2.0 ** -1022:
        return 2.0 ** -1074
    return math.ulp(a) if a != math.inf else math.inf


def _err64_mp(got, exact):
    return float(abs(mpmath.mpf(got) - exact) / mpmath.mpf(_ulp64_exact(exact)))


@njit(cache=False, error_model="numpy")
def _apply64(which, x, out):
    for i in range(x.size):
        if which == 0:
            out[i] = M.exp_nonpos(x[i])
        elif which == 1:
            out[i] = M.log1p(x[i])
        elif which == 2:
            out[i] = M.log_pos(x[i])
        elif which == 3:
            out[i] = M.tanh_sech2(x[i])[0]
        elif which == 4:
            out[i] = M.tanh_sech2(x[i])[1]
        else:
            out[i] = M.exp_expm1_nonpos(x[i])[1]


def _mp_ref(which, x):
    x = mpmath.mpf(float(x))
    if which == EXP:
        return mpmath.exp(x)
    if which == LOG1P:
        return mpmath.log1p(x)
    if which == LOG:
        return mpmath.log(x)
    if which == TANH:
        return mpmath.tanh(x)
    if which == SECH2:
        return mpmath.sech(x) ** 2
    return mpmath.expm1(x)


def _dense_check64(which, x, ld_ref, bound, top=200):
    """ULP errors against a longdouble reference; the ``top`` worst re-checked with mpmath."""
    got = np.empty_like(x)
    _apply64(which, x, got)
    ref = ld_ref(x.astype(np.longdouble))
    ulp = np.spacing(np.abs(ref.astype(np.float64))).astype(np.longdouble)
    ulp = np.maximum(ulp, np.longdouble(2.0 ** -1074))
    err = (np.abs(got.astype(np.longdouble) - ref) / ulp).astype(np.float64)
    worst_idx = np.argsort(err)[-top:]
    mp_worst = max(_err64_mp(got[i], _mp_ref(which, x[i])) for i in worst_idx)
    return float(err.max()), mp_worst


def test_f64_exp_dense_and_hard():
    rng = np.random.default_rng(11)
    x = np.concatenate([-rng.uniform(0, 745.2, 6_000_000), -rng.uniform(0, 1, 3_000_000),
                        -np.exp(rng.uniform(np.log(1e-300), 0, 1_000_000))])
    ld, mp_worst = _dense_check64(EXP, x, np.exp, 1.0)
    assert ld <= 1.0 and mp_worst <= 1.0, (ld, mp_worst)
    # structured hard cases: reduction boundaries (n ln2 +- ln2/2), subnormal onset and
    # the underflow threshold, tiny arguments
    ln2 = math.log(2)
    k = np.arange(0, 1076)
    hard = np.concatenate([-(k + 0.5) * ln2, -k * ln2, np.nextafter(-(k + 0.5) * ln2, 0),
                           np.nextafter(-(k + 0.5) * ln2, -1e9),
                           [-708.3964185322641, -708.4, -744.44007192138, -745.1332191019411,
                            -745.1332191019412, -745.2, -1e-300, -5e-324, -2.0 ** -53]])
    hard = hard[hard >= -746]
    got = np.empty_like(hard)
    _apply64(EXP, hard, got)
    errs = [_err64_mp(g, _mp_ref(EXP, h)) for g, h in zip(got, hard)]
    assert max(errs) <= 1.0, (max(errs), hard[int(np.argmax(errs))])


def test_f64_log1p_dense_and_hard():
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.uniform(0, 1, 4_000_000), np.exp(rng.uniform(-700, 700, 3_000_000)),
                        -rng.uniform(0, 1, 3_000_000)])
    ld, mp_worst = _dense_check64(LOG1P, x, np.log1p, 1.0)
    assert ld <= 1.0 and mp_worst <= 1.0, (ld, mp_worst)
    hard = np.array([math.sqrt(2) - 1, math.sqrt(0.5) - 1, np.nextafter(math.sqrt(2) - 1, 1),
                     np.nextafter(math.sqrt(2) - 1, 0), 2.0 ** -53, 2.0 ** -52, 1e-300, 5e-324,
                     -0.5, -0.2928932188134524, 1.0, 2.0 ** 52, 1.7e308])
    got = np.empty_like(hard)
    _apply64(LOG1P, hard, got)
    errs = [_err64_mp(g, _mp_ref(LOG1P, h)) for g, h in zip(got, hard)]
    assert max(errs) <= 1.0, (max(errs), hard[int(np.argmax(errs))])


def test_f64_log_dense():
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.uniform(0, 1, 3_000_000), np.exp(rng.uniform(-744, 0, 3_000_000))])
    ld, mp_worst = _dense_check64(LOG, x, np.log, 1.0)
    assert ld <= 1.0 and mp_worst <= 1.0, (ld, mp_worst)


def test_f64_tanh_sech2_sampled():
    rng = np.random.default_rng(14)
    x = np.concatenate([rng.uniform(0, 20, 1_000_000), np.exp(rng.uniform(-30, 3, 1_000_000))])
    ld, mp_worst = _dense_check64(TANH, x, np.tanh, 2.5)
    assert ld <= 2.5 and mp_worst <= 2.5, (ld, mp_worst)
    ld, mp_worst = _dense_check64(SECH2, x, lambda v: 1 / np.cosh(v) ** 2, 3.0)
    assert ld <= 3.0 and mp_worst <= 3.0, (ld, mp_worst)


def test_f64_special_values():
    x = np.array([0.0, -0.0, -np.inf, np.nan, -746.0, -745.2, -1e-300])
    e = np.empty_like(x)
    _apply64(EXP, x, e)
    assert e[0] == 1 and e[1] == 1 and e[2] == 0 and np.isnan(e[3]) and e[4] == 0
    assert e[5] == 0 and e[6] == 1
    u = np.array([0.0, -1.0, np.inf, np.nan, 1e-300, 5e-324])
    out = np.empty_like(u)
    _apply64(LOG1P, u, out)
    assert out[0] == 0 and out[1] == -np.inf and out[2] == np.inf and np.isnan(out[3])
    assert out[4] == 1e-300 and out[5] == 5e-324
