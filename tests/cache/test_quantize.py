"""Feature precisions: fp32 exact, fp16 within its rounding, int8 within half a step per channel."""
import numpy as np
import pytest
import torch

from semidff.cache.quantize import dequantize_features, int8_error_bound, quantize_features


def relu_features(seed: int = 0) -> torch.Tensor:
    """(64, 9, 13) ReLU-like maps whose channel magnitudes span 3 decades, one channel all zero."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.relu(torch.randn(64, 9, 13, generator=generator)) * torch.logspace(-2, 1, 64).view(64, 1, 1)
    features[5] = 0.0
    features[6] = -features[7]  # a negative channel too: the int8 code is symmetric
    return features


def test_fp32_is_exact():
    features = relu_features()
    values, scales = quantize_features(features, "fp32")
    assert scales is None and values.dtype == np.float32
    np.testing.assert_array_equal(dequantize_features(values), features.numpy())


def test_fp16_error_is_within_its_rounding():
    features = relu_features()
    values, scales = quantize_features(features, "fp16")
    assert scales is None and values.dtype == np.float16
    restored = dequantize_features(values)
    reference = features.numpy()
    # Half a unit in the last place of fp16: 2**-11 relative for normal numbers, 2**-25 absolute below them.
    assert (np.abs(restored - reference) <= np.maximum(np.abs(reference) * 2.0**-11, 2.0**-25)).all()


def test_int8_known_values():
    features = torch.tensor([[[-1.27, 0.0, 0.635, 0.3]], [[0.0, 0.0, 0.0, 0.0]]])  # (2, 1, 4)
    values, scales = quantize_features(features, "int8")
    np.testing.assert_allclose(scales, [0.01, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(values[:, 0], [[-127, 0, 64, 30], [0, 0, 0, 0]])  # 63.5 rounds to even
    np.testing.assert_allclose(dequantize_features(values, scales)[:, 0], [[-1.27, 0, 0.64, 0.30], [0, 0, 0, 0]], atol=1e-6)


def test_int8_error_is_bounded_per_channel_and_reported():
    features = relu_features()
    values, scales = quantize_features(features, "int8")
    assert values.dtype == np.int8 and scales.shape == (64,) and scales.dtype == np.float32
    restored = dequantize_features(values, scales)
    error = np.abs(restored - features.numpy()).reshape(64, -1).max(axis=1)
    bound = int8_error_bound(scales)
    assert (error <= bound).all()
    assert error[5] == 0.0 and bound[5] == 0.0  # the zero channel comes back exactly
    ratio = (error / np.where(bound > 0, bound, 1)).max()
    assert 0.8 < ratio <= 1.0  # random data reaches close to the bound: the bound is tight
    reference = features.numpy()
    relative_rmse = np.sqrt(((restored - reference) ** 2).mean() / (reference**2).mean())
    print(f"int8: max |error| / bound = {ratio:.3f}, relative RMSE = {relative_rmse:.4f}")
    assert relative_rmse < 0.01


def test_refuses_what_it_cannot_store():
    with pytest.raises(ValueError, match="non-finite"):
        quantize_features(torch.tensor([[1.0, float("nan")]]), "int8")
    with pytest.raises(ValueError, match="beyond fp16's range"):
        quantize_features(torch.tensor([[7e4]]), "fp16")
    with pytest.raises(ValueError, match="expected one of fp32, fp16, int8"):
        quantize_features(torch.zeros(2, 2), "bf16")
    with pytest.raises(ValueError, match="one scale per channel"):
        dequantize_features(np.zeros((3, 2), np.int8), np.ones(2, np.float32))
