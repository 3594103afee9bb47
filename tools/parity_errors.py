"""Print the maximum error of each NumPy loss and gradient against its JAX twin.

Runs the same option grid and seeded inputs as tests/test_jax_parity.py (float64,
jax_enable_x64) and reports, per loss, the worst loss error in ULP of the twin's
value and the worst gradient error relative to the gradient's largest entry.

    python tools/parity_errors.py
"""

import pathlib
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from _cases import ALL, make_case  # noqa: E402

from ce_reference.registry import LOSSES  # noqa: E402


def main():
    worst = {}
    rng = np.random.default_rng(20261128)
    for name, combo in ALL:
        spec = LOSSES[name]
        x, t, kw = make_case(spec, rng, **dict(combo))
        val, grad = spec.value_and_grad(x, t, **kw)
        f = lambda z: spec.twin(z, t, **kw)  # noqa: E731
        if kw.get("reduction") == "none":
            jv, jg = f(x), jax.grad(lambda z: f(z).sum())(x)
        else:
            jv, jg = jax.value_and_grad(f)(x)
        jv, jg = np.asarray(jv), np.asarray(jg)
        if np.isnan(jv).any():
            continue  # zero-denominator mean: NaN by convention on both sides
        ulp = np.max(np.abs(val - jv) / np.spacing(np.abs(jv)))
        scale = np.max(np.abs(jg)) or 1.0
        rel = np.max(np.abs(grad - jg)) / scale
        w = worst.setdefault(name, [0.0, 0.0, 0])
        w[0], w[1], w[2] = max(w[0], ulp), max(w[1], rel), w[2] + 1
    print(f"{'loss':36s} {'cases':>5s} {'max loss err (ULP)':>19s} {'max grad err / max|g|':>22s}")
    for name, (ulp, rel, n) in worst.items():
        print(f"{name:36s} {n:5d} {ulp:19.2f} {rel:22.2e}")


if __name__ == "__main__":
    main()
