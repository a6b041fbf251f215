"""Layers: gradient checks (float64, every backend) and hand-computed cases."""
import numpy as np
import pytest

from zfscratch import gradcheck
from zfscratch.kernels import reference as R
from zfscratch.layers import Conv2d, Linear, LocalResponseNorm, MaxPool2d, ReLU, SoftmaxCrossEntropy

CASE_NAMES = [name for name, _ in gradcheck.cases("numpy")]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_gradient_check(backend, name):
    errs = dict(gradcheck.cases(backend))[name]()
    assert errs, "the check compared nothing"
    worst = max(errs.values())
    assert worst < 1e-6, f"{name} on {backend.name}: relative errors {errs}"


def test_gradcheck_detects_a_wrong_gradient(rng):
    layer = Linear(4, 3, rng=rng, dtype=np.float64)
    layer.backward = lambda dy: 2 * (dy @ layer.params["w"])  # wrong by a factor 2, no param grads
    errs = gradcheck.check_layer(layer, rng.standard_normal((2, 4)), rng)
    assert errs["x"] > 0.1


def test_conv_known_kernel():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.zeros((2, 1, 3, 3))
    w[0, 0, 1, 1] = 1.0            # identity
    w[1, 0] = [[0, 0, 0], [-1, 0, 1], [0, 0, 0]]  # horizontal difference
    y = R.conv2d_forward(x, w, np.array([0.0, 10.0]), stride=1, pad=1)
    assert y.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(y[0, 0], x[0, 0])
    expected = np.array([[1, 2, 2, -2], [5, 2, 2, -6], [9, 2, 2, -10], [13, 2, 2, -14]]) + 10.0
    np.testing.assert_array_equal(y[0, 1], expected)
    y2 = R.conv2d_forward(x, w[:1], None, stride=2, pad=0)  # valid 3x3, stride 2 -> 1x1
    assert y2.shape == (1, 1, 1, 1) and y2[0, 0, 0, 0] == 5.0


def test_maxpool_known_switches_ties_and_overlap():
    x = np.array([[1, 3, 3, 0],
                  [2, 9, 1, 4],
                  [9, 0, 9, 5],
                  [7, 8, 6, 5]], dtype=np.float64).reshape(1, 1, 4, 4)
    # 3x3 stride 2 ceil: windows start at rows/cols 0 and 2 (the second clipped to 2 rows/cols);
    # pixel (2,2) lies in all four windows.
    y, sw = R.maxpool_forward(x, 3, 2, ceil_mode=True)
    np.testing.assert_array_equal(y[0, 0], [[9, 9], [9, 9]])
    # (0,0): 9 at (1,1), (2,0), (2,2) -> first in row-major order (1,1) = 5
    # (0,1): 9 at (2,2) = 10; (1,0): tie (2,0)/(2,2) -> (2,0) = 8; (1,1): (2,2) = 10
    np.testing.assert_array_equal(sw[0, 0], [[5, 10], [8, 10]])
    assert sw.dtype == np.int32
    # unpooling sums the gradients of the two windows that chose pixel 10
    dx = R.maxpool_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), sw, x.shape, 3, 2)
    expected = np.zeros(16)
    expected[5], expected[8], expected[10] = 1.0, 3.0, 6.0
    np.testing.assert_array_equal(dx.reshape(-1), expected)
    y2, sw2 = R.maxpool_forward(x, 2, 2, ceil_mode=False)
    np.testing.assert_array_equal(y2[0, 0], [[9, 4], [9, 9]])
    np.testing.assert_array_equal(sw2[0, 0], [[5, 7], [8, 10]])


def test_pool_output_size_rule():
    assert R.pool_output_size(110, 3, 2, True) == 55
    assert R.pool_output_size(26, 3, 2, True) == 13
    assert R.pool_output_size(13, 3, 2, True) == 6
    assert R.pool_output_size(4, 3, 2, True) == 2   # ceil((4-3)/2)+1 = 2
    assert R.pool_output_size(5, 2, 2, True) == 3   # last window starts at 4 < 5: kept
    assert R.pool_output_size(5, 2, 2, False) == 2
    assert R.pool_output_size(3, 2, 2, True) == 2   # window at 2 starts inside
    with pytest.raises(ValueError):
        R.pool_output_size(2, 3, 2, False)


def test_lcn_large_alpha_by_hand():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    size, alpha, beta, k = 3, 3.0, 0.5, 1.0
    y, scale = R.lrn_forward(x, size, alpha, beta, k)
    # window of 3 centred on c, zero-padded: sums of squares 1+4, 1+4+9, 4+9
    expected_scale = 1.0 + (alpha / size) * np.array([5.0, 14.0, 13.0])
    np.testing.assert_allclose(scale.reshape(-1), expected_scale)
    np.testing.assert_allclose(y.reshape(-1), np.array([1.0, 2.0, 3.0]) / np.sqrt(expected_scale))


def test_lcn_window_even_size_matches_pytorch_convention():
    # size 4: window [c-2, c+1]
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(1, 5, 1, 1)
    _, scale = R.lrn_forward(x, 4, 4.0, 1.0, 0.0)
    sq = x.reshape(-1) ** 2
    expected = [sq[0:2].sum(), sq[0:3].sum(), sq[0:4].sum(), sq[1:5].sum(), sq[2:5].sum()]
    np.testing.assert_allclose(scale.reshape(-1), expected)


def test_softmax_xent_tiny_example():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    loss, probs = R.softmax_xent(logits, np.array([0, 1]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.75, 0.25]])
    assert loss == pytest.approx((np.log(2.0) + np.log(4.0)) / 2)
    ce = SoftmaxCrossEntropy()
    ce.forward(logits, np.array([0, 1]))
    np.testing.assert_allclose(ce.backward(), [[-0.25, 0.25], [0.375, -0.375]])


def test_softmax_is_stable_for_large_logits():
    loss, probs = R.softmax_xent(np.array([[1000.0, 0.0]]), np.array([1]))
    assert np.isfinite(loss) and loss == pytest.approx(1000.0)
    assert np.all(np.isfinite(probs))


def test_shape_errors_name_the_layer():
    conv = Conv2d(3, 4, 3, name="convX")
    with pytest.raises(ValueError, match=r"convX.*\(N, 3, H, W\).*\(2, 5, 8, 8\)"):
        conv.forward(np.zeros((2, 5, 8, 8), np.float32))
    fc = Linear(10, 2, name="fcY")
    with pytest.raises(ValueError, match=r"fcY.*\(N, 10\).*\(2, 7\)"):
        fc.forward(np.zeros((2, 7), np.float32))
    pool = MaxPool2d(3, 2, name="poolZ")
    y = pool.forward(np.zeros((1, 2, 7, 7), np.float32))
    with pytest.raises(ValueError, match="poolZ"):
        pool.backward(np.zeros((1, 2, 2, 2), np.float32))
    assert y.shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="labels"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), np.array([0, 3]))


def test_relu_and_lcn_layers_keep_float32():
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 5)).astype(np.float32)
    assert ReLU().forward(x).dtype == np.float32
    assert LocalResponseNorm().forward(x).dtype == np.float32
