"""Linear cross-entropy: the same bits on every run, and how far results move across BLAS
thread counts and chunk sizes (the numbers in docs/linear.md).

    python tools/linear_determinism.py [N H V]      # default 2048 512 32768, float32

For each pair of settings: the largest difference of the value and of each gradient,
relative to the largest entry of that gradient, and in eps of the operand (the error
unit of the verifier: |G| |W|, |G|^T |h|, sum |G| -- bounds any summation order).
"""

from __future__ import annotations

import sys

import numpy as np

import ce_reference as ce
from ce_reference.cases import Case
from ce_reference.verify import errors

SPEC = ce.LOSSES["linear_cross_entropy"]


def run(h, W, t, workers, chunk):
    return ce.linear_cross_entropy_value_and_grad(h, W, t, workers=workers, chunk_size=chunk)


def compare(a, b, ops, dtype):
    out = {}
    names = ("value", "d_input", "d_linear_weight")
    got = [a[0]] + list(a[1][:2])
    ref = [b[0]] + list(b[1][:2])
    operand = [ops.value] + list(ops.grad[:2])
    for name, x, y, op in zip(names, got, ref, operand):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        rel = float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300))
        eps, _, _ = errors.combined(x, y, op, dtype)
        out[name] = (rel, eps)
    return out


def main(N=2048, H=512, V=32768):
    rng = np.random.default_rng(0)
    h = rng.standard_normal((N, H), dtype=np.float32)
    W = (rng.standard_normal((V, H), dtype=np.float32) * (3 / np.sqrt(H)))
    t = rng.integers(0, V, N)
    case = Case(x=h, targets=t, kwargs={"linear_weight": W, "reduction": "mean"},
                domain="features", linear="linear_weight")
    ops = errors.operands(SPEC, case)
    base = run(h, W, t, 1, 256)
    again = [run(h, W, t, 1, 256) for _ in range(2)]
    same = all(np.array_equal(base[0], r[0]) and all(np.array_equal(x, y) for x, y in
                                                      zip(base[1][:2], r[1][:2])) for r in again)
    print(f"(N, H, V) = ({N}, {H}, {V}) float32; same bits on 3 runs (workers 1, chunk 256): "
          f"{same}")
    print("| compared with workers 1, chunk 256 | quantity | max |diff| / max |ref| | "
          "eps of the operand |")
    print("|---|---|---:|---:|")
    for workers, chunk in ((2, 256), (1, 64), (1, 1024), (2, 1024), (2, None)):
        for name, (rel, eps) in compare(run(h, W, t, workers, chunk), base, ops,
                                        np.float32).items():
            print(f"| workers {workers}, chunk {chunk} | {name} | {rel:.2e} | {eps:.2f} |")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]))
