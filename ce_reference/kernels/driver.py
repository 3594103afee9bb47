r"""The generic blocked driver: ``NAME_value_and_grad`` for any loss from its per-block code.

A loss that has no hand-written fused kernel still gets a ``value_and_grad``
with ``out=`` and ``workers=``: its validated problem is cut into a fixed list of
blocks, each block runs the loss's *plain* per-block code (the very functions
behind ``NAME`` and ``NAME_grad``) with the whole batch's denominator, and

* the blocks run on ``workers`` threads, each writing only its own rows of the
  gradient and of the per-example losses, which are reduced once at the end in
  row order -- the results are bitwise those of the plain functions' per-block
  formulas and do not depend on ``workers``;
* the input's values are checked block by block (no input-sized boolean
  masks); a bad block makes the problem raise the plain function's error;
* blocks are about :data:`._blocks.BLOCK_BYTES` (class-axis losses: whole rows
  of a ``(pre, C, post)`` view) or :data:`._blocks.TILE_BYTES` (elementwise
  losses: tiles of the coalesced, never-expanded operands).

``block_fn(sub)`` receives a sub-problem (:meth:`ClassProblem.block` /
:meth:`ElementwiseProblem.tile`) and returns ``(losses, grad)``: per-example
losses of the block and the block's gradient already multiplied by the
reduction scale, class axis last for class-axis losses.
"""

from __future__ import annotations

import numpy as np

from . import _blocks


def class_value_and_grad(problem, block_fn, out=None, workers=None, compiled=None):
    """Value and gradient of a class-axis loss, block by block (see module docstring).

    ``compiled(problem, grad, nworkers) -> per-row losses``: the loss's compiled kernel
    (:mod:`.compiled_backend`), run instead when ``problem.backend == "numba"``.
    """
    nworkers = _blocks.resolve_workers(workers)
    out = _blocks.checked_out(out, problem)
    pre, C, post = problem.pre, problem.C, problem.post
    grad = out if out is not None else np.empty(problem.shape, problem.rdt)
    if compiled is not None and problem.backend == "numba":
        return problem.reduce(compiled(problem, grad, nworkers)), grad
    g3 = grad.reshape(pre, C, post)
    rows = np.empty((pre, post), problem.cdt)
    B = max(1, _blocks.BLOCK_BYTES // (C * problem.cdt.itemsize))
    if post == 1:
        blocks = [(slice(r, min(pre, r + B)), slice(0, 1)) for r in range(0, pre, B)]
    else:
        Bq = min(B, post)
        blocks = [(slice(r, r + 1), slice(q, min(post, q + Bq)))
                  for r in range(pre) for q in range(0, post, Bq)]
    bad = np.zeros(len(blocks), bool)

    def body(i, _):
        sr, sq = blocks[i]
        sub = problem.block(sr, sq)
        if not sub.values_ok():
            bad[i] = True
            return
        losses, g = block_fn(sub)
        rows[sr, sq] = losses
        np.copyto(g3[sr, :, sq], np.moveaxis(g, -1, 1), casting="unsafe")

    _blocks.run_blocks(len(blocks), body, lambda: None, nworkers, problem.raw.size)
    if bad.any():
        _blocks.raise_invalid(problem)
    return problem.reduce(rows), grad


def elementwise_value_and_grad(problem, block_fn, out=None, workers=None, compiled=None):
    """Value and gradient of an elementwise loss, tile by tile (see module docstring).

    ``compiled(problem, grad, nworkers) -> per-element losses or their total``: the
    loss's compiled kernel (:mod:`.compiled_backend`), run instead when
    ``problem.backend == "numba"``.
    """
    nworkers = _blocks.resolve_workers(workers)
    out = _blocks.checked_out(out, problem)
    raw = problem.raw
    grad = out if out is not None else np.empty(raw.shape, problem.rdt)
    if compiled is not None and problem.backend == "numba":
        return problem.reduce(compiled(problem, grad, nworkers)), grad
    x = raw if raw.flags.c_contiguous else raw.copy(order="C")   # 0-d stays 0-d
    loss_out = np.empty(x.shape, problem.rdt) if problem.reduction == "none" else None
    names = [n for n, a in problem.ops.items() if a is not None]
    arrays = [x] + [np.broadcast_to(problem.ops[n], x.shape) for n in names] + [grad]
    if loss_out is not None:
        arrays.append(loss_out)
    shp, views = _blocks.coalesce(x.shape, arrays)
    X, G = views[0], views[1 + len(names)]
    ops = dict(zip(names, views[1:1 + len(names)]))
    LO = views[-1] if loss_out is not None else None
    tile_list = _blocks.tiles(shp, max(1, _blocks.TILE_BYTES // problem.cdt.itemsize))
    partial = np.zeros(len(tile_list), np.float64)
    bad = np.zeros(len(tile_list), bool)

    def body(i, _):
        idx = tile_list[i]
        sub = problem.tile({"input": X[idx], **{n: v[idx] for n, v in ops.items()}})
        if not sub.values_ok():
            bad[i] = True
            return
        loss, g = block_fn(sub)
        partial[i] = float(np.sum(loss, dtype=np.float64))
        if LO is not None:
            np.copyto(LO[idx], loss, casting="unsafe")
        np.copyto(G[idx], g, casting="unsafe")

    if x.size:
        _blocks.run_blocks(len(tile_list), body, lambda: None, nworkers, x.size)
    if bad.any():
        _blocks.raise_invalid(problem)
    return problem.reduce(loss_out if loss_out is not None else partial), grad
