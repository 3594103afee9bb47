"""Every bad input gets a ValueError/TypeError naming the argument."""

import numpy as np
import pytest

import ce_reference as ce
from ce_reference.registry import LOSSES

X2 = np.array([[0.5, 1.0, -0.5], [0.1, 0.2, 0.3]])
P2 = np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
IDX = np.array([0, 2])


def _entry_points(name):
    s = LOSSES[name]
    return [s.value, s.grad, s.value_and_grad]


BAD = [
    # (loss, args, kwargs, exception, message fragment)
    ("softmax_cross_entropy", (X2, np.array([0, 1, 2])), {}, ValueError, "targets"),
    ("softmax_cross_entropy", (X2, np.array([0, 3])), {}, ValueError, "class index 3"),
    ("softmax_cross_entropy", (X2, np.array([0, -1])), {}, ValueError, "class index -1"),
    ("softmax_cross_entropy", (X2, np.array([0, -100])), {"ignore_index": -1}, ValueError,
     "other than ignore_index=-1"),
    ("softmax_cross_entropy", (X2, P2[:, :2]), {}, ValueError, "targets"),
    ("softmax_cross_entropy", (X2, P2 * 3), {}, ValueError, "targets"),
    ("softmax_cross_entropy", (X2, np.where(P2 > .5, np.nan, P2)), {}, ValueError, "NaN"),
    ("softmax_cross_entropy", (X2, P2), {"ignore_index": -100}, ValueError, "ignore_index"),
    ("softmax_cross_entropy", (np.where(X2 > .9, np.nan, X2), IDX), {}, ValueError, "logits"),
    ("softmax_cross_entropy", (np.where(X2 > .9, np.inf, X2), IDX), {}, ValueError, "+inf"),
    ("softmax_cross_entropy", (np.full((2, 3), -np.inf), IDX), {}, ValueError, "all -inf"),
    ("softmax_cross_entropy", (X2, IDX), {"reduction": "avg"}, ValueError, "reduction"),
    ("softmax_cross_entropy", (X2, IDX), {"reduction": None}, ValueError, "reduction"),
    ("softmax_cross_entropy", (X2, IDX), {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ("softmax_cross_entropy", (X2, IDX), {"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ("softmax_cross_entropy", (X2, IDX), {"label_smoothing": float("nan")}, ValueError,
     "label_smoothing"),
    ("softmax_cross_entropy", (X2, IDX), {"label_smoothing": "x"}, TypeError, "label_smoothing"),
    ("softmax_cross_entropy", (X2, IDX), {"weight": np.ones(2)}, ValueError, "weight"),
    ("softmax_cross_entropy", (X2, IDX), {"weight": np.array([1, -1, 1])}, ValueError, "weight"),
    ("softmax_cross_entropy", (X2, IDX), {"weight": np.array([1, np.nan, 1])}, ValueError,
     "weight"),
    ("softmax_cross_entropy", (X2, IDX), {"axis": 2}, ValueError, "axis"),
    ("softmax_cross_entropy", (X2, IDX), {"axis": -3}, ValueError, "axis"),
    ("softmax_cross_entropy", (X2, IDX), {"axis": 0.5}, TypeError, "axis"),
    ("softmax_cross_entropy", (X2, IDX), {"ignore_index": 1.5}, TypeError, "ignore_index"),
    ("softmax_cross_entropy", (np.array(1.0), np.array(0)), {}, ValueError, "axis"),
    ("softmax_cross_entropy", (np.zeros((2, 0)), np.zeros(2, int)), {}, ValueError, "class axis"),
    ("softmax_cross_entropy", (np.array(["a", "b"]), np.array(0)), {}, TypeError, "logits"),
    ("softmax_cross_entropy", (X2.astype(complex), IDX), {}, TypeError, "logits"),
    ("softmax_cross_entropy", (X2, np.array(["a", "b"])), {}, TypeError, "targets"),
    ("softmax_cross_entropy", ([[1, 2], [3]], IDX), {}, TypeError, "logits"),
    ("categorical_cross_entropy", (P2 * 2, IDX), {}, ValueError, "probs"),
    ("categorical_cross_entropy", (-P2, IDX), {}, ValueError, "probs"),
    ("categorical_cross_entropy", (np.where(P2 > .5, np.nan, P2), IDX), {}, ValueError, "probs"),
    ("categorical_cross_entropy", (np.where(P2 > .5, np.inf, P2), IDX), {}, ValueError, "probs"),
    ("categorical_cross_entropy", (P2, np.array([0, 5])), {}, ValueError, "class index 5"),
    ("categorical_cross_entropy", (P2, IDX), {"eps": 1e-20}, ValueError, "eps"),
    ("categorical_cross_entropy", (P2.astype(np.float32), IDX), {"eps": 1e-9}, ValueError, "eps"),
    ("categorical_cross_entropy", (P2, IDX), {"eps": 0.7}, ValueError, "eps"),
    ("categorical_cross_entropy", (P2, IDX), {"eps": "small"}, TypeError, "eps"),
    ("categorical_cross_entropy", (P2, IDX), {"weight": [[1, 1, 1]]}, ValueError, "weight"),
    ("binary_cross_entropy", (P2, P2[:, :2]), {}, ValueError, "targets"),
    ("binary_cross_entropy", (P2, P2 - 1), {}, ValueError, "targets"),
    ("binary_cross_entropy", (P2 + 1, P2), {}, ValueError, "probs"),
    ("binary_cross_entropy", (P2, np.full_like(P2, np.nan)), {}, ValueError, "targets"),
    ("binary_cross_entropy", (P2, P2), {"weight": np.ones(4)}, ValueError, "weight"),
    ("binary_cross_entropy", (P2, P2), {"weight": -np.ones(3)}, ValueError, "weight"),
    ("binary_cross_entropy", (np.ones((2, 1)), np.ones((2, 3))), {}, ValueError, "targets"),
    ("binary_cross_entropy", (np.float16([0.5]), np.ones(1)), {"eps": 1e-4}, ValueError, "eps"),
    ("binary_cross_entropy_with_logits", (np.array([np.nan, 1.0]), np.ones(2)), {}, ValueError,
     "logits"),
    ("binary_cross_entropy_with_logits", (X2, X2), {}, ValueError, "targets"),
    ("binary_cross_entropy_with_logits", (X2, P2), {"pos_weight": np.ones(2)}, ValueError,
     "pos_weight"),
    ("binary_cross_entropy_with_logits", (X2, P2), {"pos_weight": -np.ones(3)}, ValueError,
     "pos_weight"),
    ("binary_cross_entropy_with_logits", (X2, P2), {"reduction": "mean "}, ValueError,
     "reduction"),
    ("binary_cross_entropy_with_logits", (X2.astype(object), P2), {}, TypeError, "logits"),
    ("binary_cross_entropy_with_logits", (X2, P2.astype(np.longdouble)), {}, TypeError,
     "targets"),
]


@pytest.mark.parametrize("name,args,kwargs,exc,fragment", BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_rejected_with_a_named_message(name, args, kwargs, exc, fragment):
    copies = [np.array(a, copy=True, dtype=object) if isinstance(a, list) else np.copy(a)
              for a in args]
    for fn in _entry_points(name):
        with pytest.raises(exc, match=None) as info:
            fn(*args, **kwargs)
        assert fragment in str(info.value), str(info.value)
    for a, c in zip(args, copies):  # even failing calls leave inputs alone
        if not isinstance(a, list):
            np.testing.assert_array_equal(a, c)


def test_a_valid_class_may_be_ignored_and_negative_ignore_index_works():
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]])
    t = np.array([1, -100, 0])
    got = ce.softmax_cross_entropy(x, t, ignore_index=-100)
    kept = ce.softmax_cross_entropy(x[[0, 2]], t[[0, 2]])
    assert got == kept
    got = ce.softmax_cross_entropy(x, np.array([1, 0, 0]), ignore_index=0)
    assert got == ce.softmax_cross_entropy(x[:1], np.array([1]))
