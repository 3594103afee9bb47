"""Interleaved before/after timing of the NumPy fused kernels, in one process.

    python tools/bench_before_after.py [--before REV] [--rounds 9]

``REV`` (default ``9a765c5``: the last commit before the one-loss-one-unit
restructuring) is exported with ``git archive`` into a temporary directory as the
package ``ce_reference_before`` (its imports are relative, so a rename is enough) and
imported beside this checkout's ``ce_reference``.  Each case runs both versions in
alternating order round by round (``out=``, 2 workers; this checkout's kernels asked
for by ``backend="numpy"``, the compiled ones shown beside for information) and prints
the medians and the ratio after / before.  The first round is a warm-up.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np


def export(rev: str, into: str) -> None:
    """``ce_reference`` of ``rev`` as ``into/ce_reference_before``."""
    blob = subprocess.run(["git", "archive", rev, "ce_reference"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "ce_reference"), os.path.join(into, "ce_reference_before"))


def cases(rng):
    def softmax(shape):
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        return x, rng.integers(0, shape[-1], shape[:-1])

    x, t = softmax((4096, 8192))
    out = [("softmax (4096, 8192)", "softmax_cross_entropy", (x, t), {}),
           ("softmax (256, 131072)", "softmax_cross_entropy", softmax((256, 131072)), {}),
           ("softmax (1e6, 10)", "softmax_cross_entropy", softmax((1_000_000, 10)), {}),
           ("softmax (4096, 8192) smoothing 0.1", "softmax_cross_entropy", (x, t),
            {"label_smoothing": 0.1})]
    z = (rng.standard_normal(10_000_000) * 3).astype(np.float32)
    y = (rng.random(10_000_000) < 0.5).astype(np.float32)
    out.append(("BCE-logits 1e7", "binary_cross_entropy_with_logits", (z, y), {}))
    q = rng.dirichlet(np.ones(8192), 512).astype(np.float32)
    out.append(("softmax (512, 8192) probability targets", "softmax_cross_entropy",
                (x[:512], q), {}))
    p = rng.random((2048, 1024)).astype(np.float32)
    out.append(("categorical (2048, 1024)", "categorical_cross_entropy",
                (p / p.sum(1, keepdims=True), rng.integers(0, 1024, 2048)), {}))
    out.append(("BCE probabilities 2e6", "binary_cross_entropy",
                (rng.random(2_000_000).astype(np.float32), y[:2_000_000]), {}))
    out.append(("softmax (32, 10)", "softmax_cross_entropy", softmax((32, 10)), {}))
    out.append(("softmax (256, 1000)", "softmax_cross_entropy", softmax((256, 1000)), {}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="9a765c5")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    import ce_reference as new
    from ce_reference import backends

    with tempfile.TemporaryDirectory() as tmp:
        export(args.before, tmp)
        sys.path.insert(0, tmp)
        import ce_reference_before as old

        print(f"before {args.before}, after this checkout; load {os.getloadavg()[0]:.2f}; "
              f"median of {args.rounds} interleaved rounds, float32, out=, workers=2")
        print("| case | before ms | after ms | after / before | compiled ms |")
        print("|---|---:|---:|---:|---:|")
        for name, loss, inputs, kw in cases(np.random.default_rng(0)):
            fn = loss + "_value_and_grad"
            buf = np.empty_like(inputs[0])
            impl = {"before": lambda: getattr(old, fn)(*inputs, out=buf, workers=2, **kw),
                    "after": lambda: getattr(new, fn)(*inputs, out=buf, workers=2,
                                                      backend="numpy", **kw)}
            if "numba" in backends.available():
                impl["compiled"] = lambda: getattr(new, fn)(*inputs, out=buf, workers=2,
                                                            backend="numba", **kw)
            reps = 200 if inputs[0].size < 100_000 else 1
            times = {k: [] for k in impl}
            for r in range(args.rounds + 1):
                order = list(impl) if r % 2 == 0 else list(reversed(impl))
                for tag in order:
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        impl[tag]()
                    if r:
                        times[tag].append((time.perf_counter() - t0) / reps)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            comp = f"{med['compiled']:.3f}" if "compiled" in med else "-"
            print(f"| {name} | {med['before']:.3f} | {med['after']:.3f} | "
                  f"{med['after'] / med['before']:.3f} | {comp} |", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
