"""Pinned values: the classic worked examples and closed forms derived by hand."""

import math

import numpy as np
import pytest

import ce_reference as ce

EPS64 = np.finfo(np.float64).eps
PINNED_RTOL = 4 * EPS64  # a handful of correctly rounded logs and one mean


def test_classic_binary_example():
    p, y = np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 0, 1, 0])
    # the value quoted in the issue (the often-printed 0.3285 is wrong)
    assert ce.binary_cross_entropy(p, y) == pytest.approx(0.164252033486018, rel=1e-14)
    assert ce.binary_cross_entropy(p, y) == pytest.approx(
        -(math.log(0.9) + math.log(0.8)) / 2, rel=PINNED_RTOL)
    # d/dp mean = (p - y) / (p (1 - p)) / n  ->  -1/(4*0.9), 1/(4*0.9), -1/(4*0.8), 1/(4*0.8)
    expect = np.array([-1 / 3.6, 1 / 3.6, -1 / 3.2, 1 / 3.2])
    np.testing.assert_allclose(ce.binary_cross_entropy_grad(p, y), expect, rtol=PINNED_RTOL)


def test_classic_categorical_example():
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    for t in (np.eye(3), np.array([0, 1, 2])):
        # the value quoted in the issue (the often-printed 1.1819 is wrong)
        assert ce.categorical_cross_entropy(P, t) == pytest.approx(0.4243218919376292,
                                                                   rel=PINNED_RTOL)
        expect = -np.eye(3) / (3 * np.diag(P))[:, None]   # -q / (n p)
        np.testing.assert_allclose(ce.categorical_cross_entropy_grad(P, t), expect,
                                   rtol=PINNED_RTOL)


def test_softmax_of_log_probs_equals_categorical():
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    assert ce.softmax_cross_entropy(np.log(P), np.arange(3)) == pytest.approx(
        0.4243218919376292, rel=PINNED_RTOL)
    # softmax + cross-entropy gradient: softmax(z) - y, over n
    np.testing.assert_allclose(ce.softmax_cross_entropy_grad(np.log(P), np.arange(3)),
                               (P - np.eye(3)) / 3, rtol=1e-15, atol=EPS64)


def test_label_smoothing_closed_form():
    # z = 0 gives p = 1/C; every -log p_c = log C, so the loss is log C for any eps
    C = 4
    z = np.zeros((2, C))
    for eps in (0.0, 0.3, 1.0):
        assert ce.softmax_cross_entropy(z, np.array([1, 3]), label_smoothing=eps) == \
            pytest.approx(math.log(C), rel=PINNED_RTOL)
    # gradient p - q' with q' = (1 - eps) onehot + eps / C, over n = 2
    g = ce.softmax_cross_entropy_grad(z, np.array([1, 3]), label_smoothing=0.3)
    q = 0.7 * np.eye(C)[[1, 3]] + 0.3 / C
    np.testing.assert_allclose(g, (1 / C - q) / 2, rtol=1e-15, atol=EPS64)


def test_weighted_mean_denominators_follow_pytorch():
    z = np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]))
    w = np.array([1.0, 3.0, 5.0])
    # index targets: sum_n w_{y_n} (-log p) / sum_n w_{y_n} = (1*log2 + 3*log2) / 4
    assert ce.softmax_cross_entropy(z, np.array([0, 1]), weight=w) == pytest.approx(
        math.log(2), rel=PINNED_RTOL)
    # one-hot probability targets: divided by the number of rows (PyTorch #107680)
    assert ce.softmax_cross_entropy(z, np.eye(3)[[0, 1]], weight=w) == pytest.approx(
        (1 + 3) * math.log(2) / 2, rel=PINNED_RTOL)


def test_bce_with_logits_pos_weight_closed_form():
    # x = 0: softplus(0) = log 2; loss = pw*y*log2 + (1-y)*log2
    x, y = np.zeros((2, 2)), np.array([[1.0, 0.0], [0.5, 1.0]])
    pw = np.array([3.0, 2.0])
    expect = np.array([[3, 1], [0.5 * 3 + 0.5, 2]]) * math.log(2)
    np.testing.assert_allclose(ce.binary_cross_entropy_with_logits(
        x, y, pos_weight=pw, reduction="none"), expect, rtol=PINNED_RTOL)
    # grad = (1-y) sigma(0) - pw y sigma(0) = ((1-y) - pw y) / 2
    np.testing.assert_allclose(ce.binary_cross_entropy_with_logits_grad(
        x, y, pos_weight=pw, reduction="sum"), ((1 - y) - pw * y) / 2, rtol=PINNED_RTOL)
