import pytest
import torch

from semidff.ops.warp import warp_features


def constant_flow(num_images, height, width, u=0.0, v=0.0, dtype=torch.float32):
    flow = torch.zeros(num_images, 2, height, width, dtype=dtype)
    flow[:, 0] = u
    flow[:, 1] = v
    return flow


@pytest.mark.parametrize("height, width", [(2, 2), (5, 7), (38, 63)])
def test_zero_flow_is_identity(height, width):
    features = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    warped = warp_features(features, constant_flow(2, height, width))
    assert warped.shape == features.shape
    torch.testing.assert_close(warped, features, rtol=0, atol=1e-5)


def test_mxnet_bilinear_sampler_doc_example():
    # dff-facts §1.5: constant flow u = +1 shifts content left by one pixel; last column reads 0.
    data = torch.tensor([[1.0, 4, 3, 6], [1, 8, 8, 9], [0, 4, 1, 5], [1, 0, 1, 3]]).reshape(1, 1, 4, 4)
    expected = torch.tensor([[4.0, 3, 6, 0], [8, 8, 9, 0], [4, 1, 5, 0], [0, 1, 3, 0]]).reshape(1, 1, 4, 4)
    torch.testing.assert_close(warp_features(data, constant_flow(1, 4, 4, u=1.0)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [1, 2, -1, -3])
def test_integer_shift_along_x(shift):
    features = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    warped = warp_features(features, constant_flow(1, 4, 6, u=float(shift)))
    expected = torch.zeros_like(features)
    if shift > 0:
        expected[..., : 6 - shift] = features[..., shift:]
    else:
        expected[..., -shift:] = features[..., :shift]
    torch.testing.assert_close(warped, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [1, 2, -2])
def test_integer_shift_along_y(shift):
    features = torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(2))
    warped = warp_features(features, constant_flow(1, 5, 4, v=float(shift)))
    expected = torch.zeros_like(features)
    if shift > 0:
        expected[..., : 5 - shift, :] = features[..., shift:, :]
    else:
        expected[..., -shift:, :] = features[..., :shift, :]
    torch.testing.assert_close(warped, expected, rtol=0, atol=1e-5)


def test_half_pixel_flow_averages_horizontal_neighbours():
    features = torch.randn(1, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    warped = warp_features(features, constant_flow(1, 4, 6, u=0.5))
    neighbour_mean = (features[..., :-1] + features[..., 1:]) / 2
    torch.testing.assert_close(warped[..., :-1], neighbour_mean, rtol=0, atol=1e-5)
    # The last column samples halfway to the zero outside the map.
    torch.testing.assert_close(warped[..., -1], features[..., -1] / 2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("u, v", [(10.0, 0.0), (-7.0, 0.0), (0.0, 6.0), (0.0, -5.5), (20.0, 20.0)])
def test_sampling_entirely_outside_is_zero(u, v):
    features = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(4)) + 3.0
    warped = warp_features(features, constant_flow(1, 4, 5, u=u, v=v))
    assert torch.equal(warped, torch.zeros_like(features))


def test_flow_channel_zero_moves_along_width_on_non_square_map():
    height, width = 3, 5
    features = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width)
    along_x = warp_features(features, constant_flow(1, height, width, u=1.0))
    along_y = warp_features(features, constant_flow(1, height, width, v=1.0))
    expected_x = torch.zeros_like(features)
    expected_x[..., :-1] = features[..., 1:]  # out[y, x] = in[y, x + 1]
    expected_y = torch.zeros_like(features)
    expected_y[..., :-1, :] = features[..., 1:, :]  # out[y, x] = in[y + 1, x]
    torch.testing.assert_close(along_x, expected_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(along_y, expected_y, rtol=0, atol=1e-5)


def test_flow_varies_per_pixel_and_per_image():
    features = torch.randn(2, 1, 3, 4, generator=torch.Generator().manual_seed(5))
    flow = torch.zeros(2, 2, 3, 4)
    flow[0, 0, 1, 2] = -2.0  # image 0, pixel (y=1, x=2) reads x = 0
    flow[1, 1, 0, 3] = 2.0  # image 1, pixel (y=0, x=3) reads y = 2
    warped = warp_features(features, flow)
    expected = features.clone()
    expected[0, 0, 1, 2] = features[0, 0, 1, 0]
    expected[1, 0, 0, 3] = features[1, 0, 2, 3]
    torch.testing.assert_close(warped, expected, rtol=0, atol=1e-5)


def test_single_row_and_column_maps():
    features = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    # x + 0.5 interpolates towards the zero beyond the last column.
    torch.testing.assert_close(
        warp_features(features, constant_flow(1, 1, 3, u=0.5)), torch.tensor([1.5, 2.5, 1.5]).reshape(1, 1, 1, 3)
    )
    # A single row: vertical offset 0.25 keeps 0.75 of it, zero flow keeps it all.
    torch.testing.assert_close(warp_features(features, constant_flow(1, 1, 3, v=0.25)), features * 0.75)
    column = features.reshape(1, 1, 3, 1)
    torch.testing.assert_close(warp_features(column, constant_flow(1, 3, 1)), column)
    torch.testing.assert_close(warp_features(column, constant_flow(1, 3, 1, u=-0.5)), column * 0.5)


def test_gradcheck_features_and_flow_float64():
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    # Non-integer sample points (bilinear interpolation has kinks at integers), some past the border.
    flow = (torch.rand(2, 2, 4, 5, generator=generator, dtype=torch.float64) * 0.6 + 0.2)
    flow = (flow + torch.randint(-2, 2, (2, 2, 4, 5), generator=generator)).requires_grad_(True)
    assert torch.autograd.gradcheck(warp_features, (features, flow))


def test_gradients_reach_both_inputs():
    features = torch.randn(1, 2, 4, 4, requires_grad=True)
    flow = torch.full((1, 2, 4, 4), 0.3, requires_grad=True)
    warp_features(features, flow).square().sum().backward()
    assert features.grad.abs().sum() > 0
    assert flow.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "features_shape, flow_shape",
    [
        ((1, 3, 4, 4), (1, 3, 4, 4)),  # three flow channels
        ((1, 3, 4, 4), (2, 4, 4)),  # flow missing the batch axis
        ((3, 4, 4), (1, 2, 4, 4)),  # features missing the batch axis
        ((1, 3, 4, 4), (1, 2, 4, 5)),  # spatial size differs
        ((2, 3, 4, 4), (1, 2, 4, 4)),  # batch size differs
    ],
)
def test_bad_shapes_raise(features_shape, flow_shape):
    with pytest.raises(ValueError):
        warp_features(torch.zeros(features_shape), torch.zeros(flow_shape))


def test_half_precision_features_are_sampled_on_an_fp32_grid():
    torch.manual_seed(0)
    features = torch.randn(1, 4, 40, 64)
    flow = torch.full((1, 2, 40, 64), 0.37)
    exact = warp_features(features, flow)
    half = warp_features(features.half(), flow.half())
    assert half.dtype == torch.float16
    assert torch.allclose(half.float(), exact, atol=1e-2)  # fp16 rounding of inputs and output only
