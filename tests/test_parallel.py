"""The NumPy vocab-parallel cross-entropy: exact against mpmath and the single-device loss,
for every option and split (uneven, width 1), on the verifier's extreme rows; the
invariance checker; bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import ce_reference as ce
from ce_reference.parallel import (
    check_invariance,
    reference_cross_entropy,
    split_logits,
    vocab_parallel_cross_entropy,
)

from _parallel_helpers import (
    extreme_rows,
    f64_loss_grad,
    grad_units,
    mp_loss_grad,
    value_ulps,
)

SPLITS = (1, 2, 3, 4, 8)

OPTION_SETS = [
    {},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "smoothing": "others"},
    {"label_smoothing": 0.9, "smoothing": "others"},
    {"z_loss": 1e-4},
    {"z_loss": 0.5, "label_smoothing": 0.2},
    {"z_loss": 1e-2, "label_smoothing": 0.3, "smoothing": "others", "ignore_index": 2},
    {"ignore_index": 2, "reduction": "sum"},
    {"reduction": "none", "label_smoothing": 0.05, "smoothing": "others"},
]


def _batch(rng, V, dtype, n_split=8):
    """Extreme rows plus random targets (the arg-max target on half of the rows)."""
    rows = extreme_rows(rng, V, dtype, n_split=n_split)
    x = np.stack([r for _, r in rows])
    y = rng.integers(0, V, size=len(rows))
    fin = np.where(np.isfinite(x), x, -np.inf)
    y[::2] = np.argmax(fin, axis=-1)[::2]
    y = np.where(np.isneginf(np.take_along_axis(x, y[:, None], -1)[:, 0]), 1, y)  # finite target
    return x, y


def _concat(grads):
    return np.concatenate(grads, axis=-1)


# --------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                       o.items()) or "plain")
def test_against_mpmath_every_split(rng, dtype, opts):
    """Loss within a few ULP, gradient within a few eps of its operands, for every split."""
    V = 11
    x, y = _batch(rng, V, dtype)
    if opts.get("label_smoothing"):                 # smoothing + a masked class is infinite:
        x = np.where(np.isneginf(x), dtype(-30.0), x)   # tested separately below
    exact_v, exact_g = mp_loss_grad(x, y, **opts)
    worst_v = worst_g = 0.0
    for n in (*SPLITS, V):                          # V: every shard of width 1
        loss, grads = vocab_parallel_cross_entropy(split_logits(x, n), y, **opts)
        g = _concat(grads)
        assert g.dtype == dtype and np.asarray(loss).dtype == dtype
        worst_v = max(worst_v, value_ulps(loss, exact_v, dtype))
        worst_g = max(worst_g, grad_units(g, exact_g, x, y, dtype, **opts))
    assert worst_v <= 4, worst_v
    assert worst_g <= 4, worst_g


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_single_device_softmax_cross_entropy(rng, dtype):
    """smoothing='uniform' (with and without z_loss): the library's softmax_cross_entropy."""
    V = 13
    x, y = _batch(rng, V, dtype)
    y[3] = 2
    for ls, ig, red, z in itertools.product((0.0, 0.1, 1.0), (None, 2), ("mean", "sum", "none"),
                                            (0.0, 1e-3)):
        xx = x if ls == 0 else np.where(np.isneginf(x), dtype(-30.0), x)
        kw = dict(label_smoothing=ls, ignore_index=ig, reduction=red, z_loss=z)
        ref_v = ce.softmax_cross_entropy(xx, y, **kw)
        ref_g = ce.softmax_cross_entropy_grad(xx, y, **kw)
        for n in (1, 2, 4, 5, 8, V):
            loss, grads = vocab_parallel_cross_entropy(split_logits(xx, n), y, **kw)
            assert value_ulps(loss, ref_v, dtype) <= 8
            assert grad_units(_concat(grads), ref_g, xx, y, dtype, **kw) <= 8


def test_smoothing_with_masked_class_is_infinite_not_nan(rng):
    """Smoothing puts mass on a -inf class: inf loss (as softmax_cross_entropy), finite gradient."""
    x = np.array([[0.0, -np.inf, 1.0, 2.0], [1.0, 2.0, -np.inf, -np.inf]])
    y = np.array([0, 1])
    for sm in ("uniform", "others"):
        for n in (1, 2, 4):
            loss, grads = vocab_parallel_cross_entropy(split_logits(x, n), y,
                                                       label_smoothing=0.1, smoothing=sm,
                                                       reduction="none")
            assert np.all(np.isposinf(loss))
            assert np.all(np.isfinite(_concat(grads)))
    ref = ce.softmax_cross_entropy(x, y, label_smoothing=0.1, reduction="none")
    assert np.all(np.isposinf(ref))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_slice_all_neginf_on_one_shard_no_nan(dtype):
    """A row whose slice is all -inf on one shard (not on all): finite, exact."""
    x = np.array([[1.0, 2.0, -np.inf, -np.inf, 0.5, -1.0],
                  [-np.inf, -np.inf, -np.inf, 3.0, -np.inf, -np.inf]], dtype)
    y = np.array([1, 3])
    ev, eg = mp_loss_grad(x, y, z_loss=0.1)
    for n in (2, 3, 6):
        loss, grads = vocab_parallel_cross_entropy(split_logits(x, n), y, z_loss=0.1)
        g = _concat(grads)
        assert np.isfinite(loss) and np.all(np.isfinite(g))
        assert value_ulps(loss, ev, dtype) <= 4
        assert grad_units(g, eg, x, y, dtype, z_loss=0.1) <= 4


def test_confident_row_keeps_its_digits():
    """The split log-sum-exp: -log p of a confident class far below eps stays exact."""
    x = np.array([[0.0, -40.0, -41.0, -45.0]])
    y = np.array([0])
    ev, _ = mp_loss_grad(x, y)
    assert ev < 1e-17                              # (1 + t) would round to 1
    for n in (1, 2, 4):
        loss, _ = vocab_parallel_cross_entropy(split_logits(x, n), y)
        assert value_ulps(loss, ev, np.float64) <= 2


def test_tied_maxima_across_shards(rng):
    """Ties of the maximum on several shards: each tie but one contributes its exp(0) = 1."""
    x = np.array([[5.0, 0.0, 5.0, 1.0, 5.0, 5.0]])
    y = np.array([1])
    ev, eg = mp_loss_grad(x, y, label_smoothing=0.1)
    for n in (1, 2, 3, 6):
        loss, grads = vocab_parallel_cross_entropy(split_logits(x, n), y, label_smoothing=0.1)
        assert value_ulps(loss, ev, np.float64) <= 2
        assert grad_units(_concat(grads), eg, x, y, np.float64, label_smoothing=0.1) <= 2


def test_width_zero_shards_and_float16():
    x = np.array([[1.0, 2.0, 3.0]], np.float16)
    y = np.array([2])
    loss, grads = vocab_parallel_cross_entropy([x[:, :0], x, x[:, :0]], y)
    assert loss.dtype == np.float16 and [g.shape for g in grads] == [(1, 0), (1, 3), (1, 0)]
    assert loss == ce.softmax_cross_entropy(x, y)


def test_leading_dimensions_and_scalar_batch(rng):
    x = rng.normal(size=(2, 3, 7))
    y = rng.integers(0, 7, size=(2, 3))
    loss, grads = vocab_parallel_cross_entropy(split_logits(x, 3), y, reduction="none")
    assert loss.shape == (2, 3)
    np.testing.assert_allclose(loss, ce.softmax_cross_entropy(x, y, reduction="none"), rtol=1e-14)
    l1, g1 = vocab_parallel_cross_entropy(split_logits(x[0, 0], 2), y[0, 0])
    assert l1.shape == () and _concat(g1).shape == (7,)
    assert value_ulps(l1, ce.softmax_cross_entropy(x[0, 0], y[0, 0]), np.float64) <= 2


def test_mean_over_no_kept_row_is_nan_with_zero_gradient():
    x = np.array([[1.0, 2.0], [0.0, 0.0]])
    loss, grads = vocab_parallel_cross_entropy([x[:, :1], x[:, 1:]], np.array([-100, -100]),
                                               ignore_index=-100, z_loss=0.1)
    assert np.isnan(loss) and all(np.all(g == 0) for g in grads)


def test_large_vocabulary_float32_against_float64_definition(rng):
    """(8, 4099) float32, 8 uneven shards: loss within a few ULP of the float64 definition."""
    x = (4 * rng.normal(size=(8, 4099))).astype(np.float32)
    y = rng.integers(0, 4099, size=8)
    for opts in ({}, {"label_smoothing": 0.1, "smoothing": "others", "z_loss": 1e-3}):
        ev, eg = f64_loss_grad(x, y, **opts)
        loss, grads = vocab_parallel_cross_entropy(split_logits(x, 8), y, **opts)
        assert value_ulps(loss, ev, np.float32) <= 4
        assert grad_units(_concat(grads), eg, x, y, np.float32, **opts) <= 4


def test_reference_cross_entropy_against_mpmath(rng):
    """The library-composed single-device reference (used by check_invariance) is exact too."""
    x, y = _batch(rng, 9, np.float64)
    x = np.where(np.isneginf(x), -30.0, x)
    for opts in OPTION_SETS:
        ev, eg = mp_loss_grad(x, y, **opts)
        v, g = reference_cross_entropy(x, y, **opts)
        assert value_ulps(v, ev, np.float64) <= 8, opts
        assert grad_units(g, eg, x, y, np.float64, **opts) <= 8, opts


def test_inputs_not_modified(rng):
    x = rng.normal(size=(3, 6))
    shards = split_logits(x, 2)
    copies = [s.copy() for s in shards]
    vocab_parallel_cross_entropy(shards, np.array([0, 3, 5]), label_smoothing=0.1, z_loss=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(shards, copies))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("shards, targets, kw, exc, match", [
    (np.zeros((2, 3)), [0, 1], {}, TypeError, "sequence of arrays"),
    ([], [0], {}, ValueError, "empty"),
    ([np.zeros((2, 2)), np.zeros((3, 2))], [0, 1], {}, ValueError, "leading shape"),
    ([np.zeros((2, 2)), np.zeros((2, 2), np.float32)], [0, 1], {}, TypeError, "one dtype"),
    ([np.zeros((1, 2)), np.array([[np.nan]])], [0], {}, ValueError, "NaN"),
    ([np.zeros((1, 2)), np.array([[np.inf]])], [0], {}, ValueError, r"\+inf"),
    ([np.full((1, 2), -np.inf), np.full((1, 1), -np.inf)], [0], {}, ValueError, "all -inf"),
    ([np.zeros((1, 2)), np.zeros((1, 2))], [4], {}, ValueError, "class index 4"),
    ([np.zeros((1, 2)), np.zeros((1, 2))], [-1], {}, ValueError, "class index -1"),
    ([np.zeros((1, 2)), np.zeros((1, 2))], [[0.0, 1.0, 0, 0]], {}, TypeError, "integer class"),
    ([np.zeros((1, 2))], [0], {"smoothing": "megatron"}, ValueError, "smoothing must be"),
    ([np.zeros((1, 1))], [0], {"smoothing": "others", "label_smoothing": 0.1}, ValueError,
     "V >= 2"),
    ([np.zeros((1, 2))], [0], {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ([np.zeros((1, 2))], [0], {"z_loss": -1.0}, ValueError, "z_loss"),
    ([np.zeros((1, 2))], [0], {"z_loss": float("nan")}, ValueError, "z_loss"),
    ([np.zeros((1, 2))], [0], {"reduction": "avg"}, ValueError, "reduction"),
    ([np.zeros((1, 2))], [0.5], {}, TypeError, "integer class"),
])
def test_bad_input(shards, targets, kw, exc, match):
    with pytest.raises(exc, match=match):
        vocab_parallel_cross_entropy(shards, np.asarray(targets), **kw)


# --------------------------------------------------------------------------- the checker

def _megatron_like(shards, targets, *, label_smoothing=0.0, smoothing="others", z_loss=0.0,
                   ignore_index=None, reduction="mean"):
    """Megatron-LM's label smoothing bug (#737): each shard uses its local V and local mean."""
    from scipy.special import logsumexp
    x = np.concatenate(shards, -1)
    lse = logsumexp(x, axis=-1)
    V = x.shape[-1]
    rows = lse - np.take_along_axis(x, targets[..., None], -1)[..., 0]
    grads = []
    off = 0
    p = np.exp(x - lse[..., None])
    g = p.copy()
    g[np.arange(len(targets)), targets] -= 1
    if label_smoothing:
        K = shards[0].shape[-1]                         # the bug: the local vocabulary
        s = label_smoothing * K / (K - 1) if K > 1 else label_smoothing
        mean_logp = np.mean(np.log(p[..., :K]), axis=-1)    # rank 0's local mean
        rows = (1 - s) * rows - s * mean_logp
        g = p - s / K
        g[np.arange(len(targets)), targets] = p[np.arange(len(targets)), targets] - (1 - s) - s / K
    del V
    loss = rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows
    if reduction == "mean":
        g = g / len(targets)
    for s_ in shards:
        grads.append(g[..., off: off + s_.shape[-1]])
        off += s_.shape[-1]
    return loss, grads


def test_check_invariance_passes_the_reference(rng):
    x, y = _batch(rng, 12, np.float64)
    x = np.where(np.isneginf(x), -30.0, x)
    rep = check_invariance(vocab_parallel_cross_entropy, x, y,
                           label_smoothing=[0.0, 0.1], smoothing=["uniform", "others"],
                           z_loss=[0.0, 1e-3], reduction=["mean", "none"])
    assert rep.ok, str(rep)
    assert len(rep.rows) == 16
    worst = max(max(r.loss_err, r.grad_err, r.split_loss_err, r.split_grad_err) for r in rep.rows)
    assert worst <= 8
    assert all(r.splits_run == (1, 2, 4, 8) for r in rep.rows)


def test_check_invariance_catches_megatron_smoothing_and_shrinks(rng):
    x = rng.normal(size=(6, 8))
    y = rng.integers(0, 8, 6)
    rep = check_invariance(_megatron_like, x, y, label_smoothing=[0.0, 0.1], smoothing="others")
    ok = {r.options["label_smoothing"]: r for r in rep.rows}
    assert ok[0.0].ok
    bad = ok[0.1]
    assert not bad.ok and bad.split_loss_err > 1e6 and bad.worst_split in (2, 4, 8)
    w = bad.witness
    assert w["logits"].size <= 4, w["describe"]        # shrunk to one row of a few classes
    assert "label_smoothing=0.1" in str(rep) and "FAIL" in str(rep)


def test_check_invariance_reports_an_exception(rng):
    def breaks_on_uneven(shards, targets, **kw):
        if len({s.shape[-1] for s in shards}) > 1:
            raise ValueError("uneven split")
        return vocab_parallel_cross_entropy(shards, targets, **kw)

    rep = check_invariance(breaks_on_uneven, rng.normal(size=(2, 7)), np.array([0, 6]),
                           shrink=False)
    assert not rep.ok and "uneven split" in rep.rows[0].error


# --------------------------------------------------------------------------- the audit and CLI

def test_audit_vocab_parallel_passes_the_reference():
    from ce_reference.parallel import audit_vocab_parallel
    r = audit_vocab_parallel(vocab_parallel_cross_entropy, dtypes=("float64", "float32"),
                             splits=(1, 3, 8),
                             regions_=("scale 10", "shard slice -inf", "all ignored"))
    assert r.ok, str(r)
    assert r.verdict().startswith("MATCH: worst") and "in float32" in r.verdict()
    # every option set (the function takes them all), every reduction
    assert len(r.option_sets) == 6
    assert {row.options["reduction"] for _, _, row in r.rows} == {"mean", "sum", "none"}
    assert {g for _, g, _ in r.rows} == {"scale 10", "shard slice -inf", "all ignored"}


def test_audit_vocab_parallel_catches_megatron_like_smoothing():
    from ce_reference.parallel import audit_vocab_parallel

    def no_ignore(shards, targets, *, label_smoothing=0.0, smoothing="others",
                  reduction="mean"):
        return _megatron_like(shards, targets, label_smoothing=label_smoothing,
                              smoothing=smoothing, reduction=reduction)

    r = audit_vocab_parallel(no_ignore, dtypes=("float64",), splits=(1, 2, 4),
                             regions_=("scale 1",))
    assert not r.ok and "MISMATCH" in r.verdict()
    # only the option sets the signature accepts: no z_loss, no ignore_index
    assert r.option_sets == [{}, {"label_smoothing": 0.1},
                             {"label_smoothing": 0.1, "smoothing": "others"}]
    bad = [row for _, _, row in r.rows if not row.ok]
    assert bad and all(row.options.get("label_smoothing") for row in bad)
    assert all(row.witness["logits"].size <= 4 for row in bad), [row.witness for row in bad]
    text = str(r)
    assert "smallest input: x=" in text and "label_smoothing=0.1" in text


def test_cli_vocab_parallel(tmp_path, capsys):
    import json

    from ce_reference.cli import main
    js, md = tmp_path / "vp.json", tmp_path / "vp.md"
    code = main(["audit", "ce_reference.parallel:vocab_parallel_cross_entropy",
                 "--vocab-parallel", "--dtypes", "float64", "--splits", "1,3", "--seed", "3",
                 "--json", str(js), "--markdown", str(md), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MATCH: worst" in out
    doc = json.loads(js.read_text())
    assert doc["ok"] and doc["splits"] == [1, 3] and doc["seed"] == 3
    assert "| dtype | region |" in md.read_text()


@pytest.mark.parametrize("argv", [
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--splits", "2"],
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--even"],
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--vocab-parallel",
     "--loss", "softmax_cross_entropy"],
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--vocab-parallel",
     "--timeout", "5"],
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--vocab-parallel",
     "--splits", "0,2"],
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--vocab-parallel",
     "--dtypes", "float16"],
    ["audit", "ce_reference.parallel:vocab_parallel_cross_entropy", "--vocab-parallel",
     "--quick"],
    ["audit", "megatron", "--vocab-parallel"],
    ["audit", "megatron", "--cases", "3"],
    ["audit", "no_such_module_xyz:fn", "--vocab-parallel"],
])
def test_cli_vocab_parallel_usage_errors(argv, capsys):
    from ce_reference.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
