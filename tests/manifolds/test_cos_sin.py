"""``cos_sin``: the cosine and sine of the exact rotations. Float32 on CPU takes NumPy's SIMD
functions on the tensors' memory; everything autograd, ``torch.func`` or ``torch.compile`` must
see, and every other dtype, takes torch's. Either way the numbers are the functions' to within
2 ulps, NaN/Inf give NaN without warnings, and the sine can be written over the angle."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad

from manifold_langevin.manifolds.elementary import cos_sin, numpy_trig_applies


def _ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """``|got - want|`` in float32 ulps of ``want`` (a float64 reference)."""
    spacing = np.spacing(np.abs(want.float().numpy()))
    return (got.double() - want).abs() / torch.from_numpy(spacing).double()


@pytest.mark.parametrize("bound", [1e-3, 0.1, 1.0, 10.0, 1e4])
def test_float32_cpu_is_within_two_ulps(bound):
    gen = torch.Generator().manual_seed(3)
    theta = ((2 * torch.rand(200_000, generator=gen, dtype=torch.float64) - 1) * bound).float()
    assert numpy_trig_applies(theta)
    cos, sin = cos_sin(theta)
    assert cos.dtype == sin.dtype == torch.float32
    # float64 libm is exact far below a float32 ulp: the reference is the rounded function
    t64 = theta.double()
    assert _ulps(cos, torch.cos(t64)).max() <= 2.0
    assert _ulps(sin, torch.sin(t64)).max() <= 2.0
    # and it is not torch's result relabelled: both are the same function to rounding
    assert (cos.double() - torch.cos(theta).double()).abs().max() <= 3 * 2**-24


def test_against_python_libm_on_chosen_angles():
    theta = torch.tensor([0.0, -0.0, 1e-30, 1e-8, 1e-4, 0.5, 1.0, math.pi / 2, math.pi, 100.0])
    cos, sin = cos_sin(theta)
    want = torch.tensor(
        [[math.cos(t), math.sin(t)] for t in theta.double().tolist()], dtype=torch.float64
    )
    assert _ulps(cos, want[:, 0]).max() <= 2.0
    assert _ulps(sin, want[:, 1]).max() <= 2.0
    assert cos[0] == 1.0 and sin[0] == 0.0 and math.copysign(1.0, sin[1].item()) == -1.0
    assert sin[2] == theta[2] and sin[3] == theta[3]  # sin(t) rounds to t for tiny t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_are_torch_bit_for_bit(dtype):
    theta = torch.linspace(-20.0, 20.0, 4001, dtype=torch.float64).to(dtype)
    assert not numpy_trig_applies(theta)
    cos, sin = cos_sin(theta)
    assert torch.equal(cos, torch.cos(theta)) and torch.equal(sin, torch.sin(theta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sine_written_over_the_angle(dtype):
    theta = torch.linspace(-4.0, 4.0, 1001, dtype=dtype)
    want_cos, want_sin = cos_sin(theta.clone())
    buf = theta.clone()
    cos, sin = cos_sin(buf, sin_out=buf)
    assert sin.data_ptr() == buf.data_ptr()
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)


def test_strided_and_empty_inputs():
    base = torch.linspace(-3.0, 3.0, 2000).reshape(40, 50)
    view = base[:, ::3].T
    cos, sin = cos_sin(view)
    c2, s2 = cos_sin(view.contiguous())
    assert torch.equal(cos, c2) and torch.equal(sin, s2)
    out = torch.empty(view.shape)
    _, s3 = cos_sin(view, sin_out=out)
    assert s3.data_ptr() == out.data_ptr() and torch.equal(s3, s2)
    c0, s0 = cos_sin(torch.empty(0))
    assert c0.shape == s0.shape == (0,)


def test_nonfinite_give_nan_without_warnings():
    theta = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cos, sin = cos_sin(theta)
    assert torch.isnan(cos[:3]).all() and torch.isnan(sin[:3]).all()
    assert torch.isfinite(cos[3]) and torch.isfinite(sin[3])


def test_autograd_sees_torch_functions():
    theta = torch.linspace(-2.0, 2.0, 17, requires_grad=True)
    assert not numpy_trig_applies(theta)
    cos, sin = cos_sin(theta)
    (cos + 2 * sin).sum().backward()
    t = theta.detach()
    torch.testing.assert_close(theta.grad, -torch.sin(t) + 2 * torch.cos(t))


def test_forward_mode_sees_torch_functions():
    theta = torch.linspace(-2.0, 2.0, 17)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(theta, torch.ones_like(theta))
        assert not numpy_trig_applies(dual)
        cos, sin = cos_sin(dual)
        d_sin = forward_ad.unpack_dual(sin).tangent
        d_cos = forward_ad.unpack_dual(cos).tangent
    assert numpy_trig_applies(theta)  # outside the dual level again
    torch.testing.assert_close(d_sin, torch.cos(theta))
    torch.testing.assert_close(d_cos, -torch.sin(theta))


def test_torch_func_transforms():
    theta = torch.linspace(-2.0, 2.0, 12).reshape(3, 4)
    cos, sin = torch.func.vmap(cos_sin)(theta)
    want = cos_sin(theta)
    torch.testing.assert_close(cos, want[0], rtol=0, atol=3e-7)
    torch.testing.assert_close(sin, want[1], rtol=0, atol=3e-7)
    d = torch.func.grad(lambda t: cos_sin(t)[1].sum())(theta)
    torch.testing.assert_close(d, torch.cos(theta))
    _, tangent = torch.func.jvp(lambda t: cos_sin(t)[0], (theta,), (torch.ones_like(theta),))
    torch.testing.assert_close(tangent, -torch.sin(theta))


def test_compiles_in_one_graph():
    theta = torch.linspace(-5.0, 5.0, 257)
    fn = torch.compile(lambda t: cos_sin(t), fullgraph=True, backend="eager")
    cos, sin = fn(theta)
    assert torch.equal(cos, torch.cos(theta)) and torch.equal(sin, torch.sin(theta))
