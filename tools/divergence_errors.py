"""Worst differences of nll_loss, kl_divergence and generalized_jsd from PyTorch 2.13 / Liger's formula.

    python tools/divergence_errors.py [--cases N] [--seed S]

float64, seeded random inputs (log_softmax of normal(0, sigma) logits, sigma in {0.3, 3, 30};
nll_loss also on arbitrary reals, normal(0, 10)), every reduction and option.  Printed:
the worst value difference in eps relative to the value, and the worst gradient difference
relative to the gradient element (0 where both are 0).  PyTorch: ``F.nll_loss``,
``F.kl_div`` (``none`` summed over the class dim); JSD: a float64 transcription of Liger
Kernel's own test reference with ``log M`` by ``logaddexp`` (Liger needs Triton and a GPU),
autograd for its gradient.  The errors against mpmath are the verifier's:
``ce-reference verify --loss NAME``.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

import ce_reference as ce

EPS = float(np.finfo(np.float64).eps)


def lsm(z, axis=-1):
    return z - np.logaddexp.reduce(z, axis=axis, keepdims=True)


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(got == want, 0.0, np.abs(got - want) / np.abs(want))
    return float(np.max(r)) if r.size else 0.0


def nll(rng, cases, torch, F):
    worst = {"value": 0.0, "grad": 0.0}
    for i in range(cases):
        shape = [(8, 6), (4, 6, 3), (2, 6, 3, 2)][i % 3]
        x = lsm(rng.normal(size=shape) * (0.3, 3.0, 30.0)[i % 3], axis=1) if i % 2 else \
            rng.normal(0, 10, shape)
        t = rng.integers(0, 6, size=shape[:1] + shape[2:])
        t.reshape(-1)[::5] = -100
        w = rng.uniform(0.1, 3.0, 6)
        for red in ("mean", "sum", "none"):
            v, g = ce.nll_loss_value_and_grad(x, t, axis=1, weight=w, ignore_index=-100,
                                              reduction=red)
            xt = torch.tensor(x, requires_grad=True)
            out = F.nll_loss(xt, torch.tensor(t), weight=torch.tensor(w), reduction=red)
            out.sum().backward()
            worst["value"] = max(worst["value"], _rel(v, out.detach().numpy()) / EPS)
            worst["grad"] = max(worst["grad"], _rel(g, xt.grad.numpy()))
    return worst


def kl(rng, cases, torch, F):
    worst = {"value": 0.0, "grad": 0.0}
    for i in range(cases):
        shape = [(8, 6), (4, 6, 3)][i % 2]
        s = (0.3, 3.0, 30.0)[i % 3]
        x = lsm(rng.normal(size=shape) * s, axis=1)
        lt = lsm(rng.normal(size=shape) * s, axis=1)
        for log_target in (False, True):
            t = lt if log_target else np.exp(lt)
            for red in ("batchmean", "sum", "none", "mean"):
                v, g = ce.kl_divergence_value_and_grad(x, t, axis=1, log_target=log_target,
                                                       reduction=red)
                xt = torch.tensor(x, requires_grad=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = F.kl_div(xt, torch.tensor(t), reduction=red, log_target=log_target)
                if red == "none":
                    out = out.sum(dim=1)
                out.sum().backward()
                worst["value"] = max(worst["value"], _rel(v, out.detach().numpy()) / EPS)
                worst["grad"] = max(worst["grad"], _rel(g, xt.grad.numpy()))
    return worst


def liger(log_q, log_p, beta, torch, F):
    """Liger Kernel's test reference (test/transformers/test_jsd.py), logaddexp form."""
    kl_ = lambda inp, tgt: F.kl_div(inp, tgt, reduction="none", log_target=True)  # noqa: E731
    if beta == 0:
        loss = kl_(log_q, log_p).sum(dim=-1)
    elif beta == 1:
        loss = kl_(log_p, log_q).sum(dim=-1)
    else:
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        loss = beta * kl_(log_m, log_p).sum(dim=-1) + (1 - beta) * kl_(log_m, log_q).sum(dim=-1)
    return (loss / log_q.shape[0]).sum()


def jsd(rng, cases, torch, F):
    out = {}
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        worst = {"value": 0.0, "grad": 0.0}
        for i in range(cases):
            s = (0.3, 3.0, 30.0)[i % 3]
            X, Y = lsm(rng.normal(size=(8, 6)) * s), lsm(rng.normal(size=(8, 6)) * s)
            v, g = ce.generalized_jsd_value_and_grad(X, Y, beta=beta)
            xt = torch.tensor(X, requires_grad=True)
            ref = liger(xt, torch.tensor(Y), beta, torch, F)
            ref.backward()
            worst["value"] = max(worst["value"], _rel(v, ref.item()) / EPS)
            worst["grad"] = max(worst["grad"], _rel(g, xt.grad.numpy()))
        out[f"beta={beta}"] = worst
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=2026)
    a = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(a.seed)
    print("| loss | vs | value (eps, relative) | gradient (relative) |")
    print("|---|---|---:|---:|")
    for name, fn in (("nll_loss", nll), ("kl_divergence", kl)):
        w = fn(rng, a.cases, torch, F)
        print(f"| {name} | PyTorch {torch.__version__} | {w['value']:.3g} | {w['grad']:.3g} |")
    for key, w in jsd(rng, a.cases, torch, F).items():
        print(f"| generalized_jsd {key} | Liger's formula (float64) | {w['value']:.3g} | "
              f"{w['grad']:.3g} |")


if __name__ == "__main__":
    main()
