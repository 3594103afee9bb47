"""optax's own classification tests, expressed with ce_reference.conventions: tuple class
axes and ``where`` masks (per example and per logit), values and gradients against optax."""

import numpy as np
import pytest

from ce_reference.conventions import masked_softmax_cross_entropy

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jnp = jax.numpy

AXES = [(1, 3), (3, 2), (2, 3), (-3, -1), (-1, -2), (-2, -1), (0, 1, 3), (-4, -3, -1), 0, 1, 2,
        -1]


def _optax(fn, logits, labels, axis, where):
    f = lambda z: jnp.sum(fn(z, labels, axis=axis, where=where))  # noqa: E731
    return (np.asarray(fn(logits, labels, axis=axis, where=where)),
            np.asarray(jax.grad(f)(jnp.asarray(logits))))


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("mask", [None, "example", "logit"])
def test_integer_labels_match_optax(rng, axis, mask):
    shape = (2, 3, 4, 5)
    logits = rng.normal(0, 3, shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    classes = tuple(a % 4 for a in axes)
    batch = tuple(shape[k] for k in range(4) if k not in classes)
    C = int(np.prod([shape[k] for k in classes]))
    labels = rng.integers(0, C, batch)
    where = None
    if mask == "example":
        where = rng.random(batch) < 0.7
    elif mask == "logit":
        where = rng.random(shape) < 0.6
    rows, grad = masked_softmax_cross_entropy(logits, labels, axis=axis, where=where)
    want_rows, want_grad = _optax(optax.losses.softmax_cross_entropy_with_integer_labels,
                                  logits, labels, axis, where)
    finite = np.isfinite(want_rows)              # optax: a masked label logit is still read
    np.testing.assert_allclose(rows[finite], want_rows[finite], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("mask", [None, "example", "logit"])
def test_label_rows_match_optax(rng, axis, mask):
    shape = (4, 5, 6)
    logits = rng.normal(0, 3, shape)
    labels = np.moveaxis(rng.dirichlet(np.ones(shape[axis]),
                                       size=tuple(s for k, s in enumerate(shape)
                                                  if k != axis % 3)), -1, axis)
    where = None
    if mask == "example":
        where = rng.random(tuple(s for k, s in enumerate(shape) if k != axis % 3)) < 0.7
    elif mask == "logit":
        where = rng.random(shape) < 0.6
    rows, grad = masked_softmax_cross_entropy(logits, labels, axis=axis, where=where)
    want_rows, want_grad = _optax(optax.losses.softmax_cross_entropy, logits, labels, axis,
                                  where)
    np.testing.assert_allclose(rows, want_rows, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_optax_fixture_values_and_fully_masked_rows():
    """optax's SoftmaxCrossEntropyTest fixture: expected [9.00013, 3.0696733] (float32),
    and rows whose logits are all masked give 0."""
    ys = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]], np.float32)
    ts = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    rows, _ = masked_softmax_cross_entropy(ys, ts)
    np.testing.assert_allclose(rows, [9.00013, 3.0696733], atol=1e-4)
    rows, grad = masked_softmax_cross_entropy(ys, ts, where=np.array([[1, 0, 0], [0, 0, 0]], bool))
    assert rows[1] == 0 and np.all(grad[1] == 0)
    rows, _ = masked_softmax_cross_entropy(ys, np.array([1, 0]),
                                           where=np.array([[1, 0, 0], [0, 0, 0]], bool))
    assert rows[1] == 0


def test_masked_entries_do_not_count(rng):
    """optax's test_mask: a mask equals dropping the masked entries."""
    for size in (5, 10):
        preds, targets = rng.normal(size=size), rng.dirichlet(np.ones(size))
        mask = rng.integers(2, size=size).astype(bool)
        mask[0] = True
        a, _ = masked_softmax_cross_entropy(preds[mask], targets[mask])
        b, _ = masked_softmax_cross_entropy(preds, targets, where=mask)
        np.testing.assert_allclose(a, b, rtol=1e-14)
