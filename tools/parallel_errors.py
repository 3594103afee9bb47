"""Errors of the NumPy vocab-parallel loss per option and split, against mpmath and the
single-device reference (the table in docs/parallel.md).

    python tools/parallel_errors.py [--seeds 3] [--vocab 16]

Inputs: the verifier's extreme rows of ``tests/_parallel_helpers.extreme_rows`` (normal
sigma 1 and 10, a confident row, +-1e4, all equal, -inf masked classes, a whole shard's
slice -inf, tied maxima on different shards, the maximum in each shard, exp underflow),
targets the arg-max on half of the rows.  Values: error in eps of the dtype relative to
the exact value (ULP-like); gradients: per element, relative to the operands
``|p_k (1 + 2 z lse)| (1 + |x_k - max x|) + q_k`` (the verifier's unit).  With label
smoothing, -inf logits are replaced by -30 (smoothing + a masked class is an infinite
loss, checked separately in the tests).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import ce_reference as ce  # noqa: E402
from ce_reference.parallel import (  # noqa: E402
    reference_cross_entropy,
    split_logits,
    vocab_parallel_cross_entropy,
)
from _parallel_helpers import extreme_rows, grad_units, mp_loss_grad, value_ulps  # noqa: E402

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "smoothing": "others"},
    {"z_loss": 1e-4},
    {"z_loss": 0.5, "label_smoothing": 0.3, "smoothing": "others"},
    {"ignore_index": 2, "reduction": "sum"},
    {"reduction": "none", "label_smoothing": 0.05},
]
SPLITS = (1, 2, 4, 8, "V")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=16)
    a = ap.parse_args()
    V = a.vocab
    print("| dtype | options | split | vs mpmath: value / grad | vs single-device: value / grad |")
    print("|---|---|---|---:|---:|")
    for dtype in (np.float64, np.float32):
        for opts in OPTIONS:
            worst = {n: [0.0, 0.0, 0.0, 0.0] for n in SPLITS}
            for seed in range(a.seeds):
                rng = np.random.default_rng(seed)
                rows = extreme_rows(rng, V, dtype, n_split=8)
                x = np.stack([r for _, r in rows])
                y = rng.integers(0, V, size=len(rows))
                fin = np.where(np.isfinite(x), x, -np.inf)
                y[::2] = np.argmax(fin, axis=-1)[::2]
                y = np.where(np.isneginf(np.take_along_axis(x, y[:, None], -1)[:, 0]), 1, y)
                if opts.get("label_smoothing"):
                    x = np.where(np.isneginf(x), dtype(-30), x)
                ev, eg = mp_loss_grad(x, y, **opts)
                if opts.get("smoothing", "uniform") == "uniform":       # the library itself
                    rv = ce.softmax_cross_entropy(x, y, **opts)
                    rg = ce.softmax_cross_entropy_grad(x, y, **opts)
                else:
                    rv, rg = reference_cross_entropy(x, y, **opts)
                for n in SPLITS:
                    k = V if n == "V" else n
                    loss, grads = vocab_parallel_cross_entropy(split_logits(x, k), y, **opts)
                    g = np.concatenate(grads, -1)
                    w = worst[n]
                    w[0] = max(w[0], value_ulps(loss, ev, dtype))
                    w[1] = max(w[1], grad_units(g, eg, x, y, dtype, **opts))
                    w[2] = max(w[2], value_ulps(loss, rv, dtype))
                    w[3] = max(w[3], grad_units(g, rg, x, y, dtype, **opts))
            lab = ", ".join(f"{k}={v}" for k, v in opts.items()) or "plain"
            for n in SPLITS:
                w = worst[n]
                sp = f"{V} (width 1)" if n == "V" else str(n)
                print(f"| {np.dtype(dtype).name} | {lab} | {sp} | {w[0]:.2f} / {w[1]:.2f} | "
                      f"{w[2]:.2f} / {w[3]:.2f} |")


if __name__ == "__main__":
    main()
