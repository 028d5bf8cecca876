"""model.metrics.image (MSE, PSNR, SSIM) against scikit-image, numpy and scipy.

The references take H×W×C float64 numpy arrays; our functions take B×C×H×W tensors, so every
comparison goes one image at a time through ``_hwc``.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from model.metrics import mse_per_image, psnr, ssim, ssim_terms
from model.metrics.image import MSE_FLOOR, SSIM_K2, SSIM_RADIUS, SSIM_SIGMA, psnr_from_mse
from tests.utils import single_thread  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = {"astronaut": skdata.astronaut, "chelsea": skdata.chelsea, "coffee": skdata.coffee}


def _hwc(t: torch.Tensor) -> np.ndarray:
    """One C×H×W image → H×W×C float64."""
    return t.detach().double().permute(1, 2, 0).numpy()


def _sk_ssim(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """scikit-image's SSIM with the paper's settings, per image of a B×C×H×W batch."""
    return np.array([structural_similarity(_hwc(a), _hwc(b), gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1, channel_axis=2)
                     for a, b in zip(x, y)])


def _noisy_pair(shape, noise: float, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [0, 1] and a copy with Gaussian noise of std ``noise``, clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


def _photo(name: str, h: int, w: int) -> np.ndarray:
    """A bundled photograph, centre-cropped to the aspect h:w and resized to H×W×3 float64 in [0, 1]."""
    img = PHOTOS[name]().astype(np.float64) / 255
    H, W = img.shape[:2]
    if H * w > W * h:  # too tall: crop rows
        ch = W * h // w
        img = img[(H - ch) // 2:(H - ch) // 2 + ch]
    else:
        cw = H * w // h
        img = img[:, (W - cw) // 2:(W - cw) // 2 + cw]
    return resize(img, (h, w), anti_aliasing=True)


def _jpeg_like(img: np.ndarray, step: float = 0.08) -> np.ndarray:
    """Quantise the 8×8 block DCT of every channel (what JPEG loses), then back to pixels."""
    out = img.copy()
    h8, w8 = img.shape[0] // 8 * 8, img.shape[1] // 8 * 8
    for i in range(0, h8, 8):
        for j in range(0, w8, 8):
            block = scipy.fft.dctn(img[i:i + 8, j:j + 8], axes=(0, 1), norm="ortho")
            out[i:i + 8, j:j + 8] = scipy.fft.idctn(np.round(block / step) * step, axes=(0, 1), norm="ortho")
    return out.clip(0, 1)


def _degrade(img: np.ndarray, how: str) -> np.ndarray:
    if how == "blur":
        return scipy.ndimage.gaussian_filter(img, sigma=(1.2, 1.2, 0))
    if how == "jpeg":
        return _jpeg_like(img)
    rng = np.random.default_rng(0)
    return (img + 0.05 * rng.standard_normal(img.shape)).clip(0, 1)


def _nchw(*imgs: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(dtype)


# --- SSIM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("noise", [0.01, 0.1, 0.3, 1.0])
def test_ssim_matches_skimage_on_random_images(dtype, noise):
    x, y = _noisy_pair((3, 3, 32, 32), noise, dtype)
    got = ssim(x, y)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.shape == (3,)
    np.testing.assert_allclose(got.double().numpy(), _sk_ssim(x, y), rtol=0, atol=1e-4)


@pytest.mark.parametrize("hw", [(11, 11), (37, 53), (12, 64), (64, 11)], ids=lambda s: "x".join(map(str, s)))
def test_ssim_matches_skimage_on_odd_sizes(hw):
    x, y = _noisy_pair((2, 3, *hw), 0.2, torch.float64, seed=1)
    np.testing.assert_allclose(ssim(x, y).numpy(), _sk_ssim(x, y), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("hw", [(64, 64), (128, 96)], ids=lambda s: "x".join(map(str, s)))
def test_ssim_matches_skimage_on_photographs(name, hw):
    img = _photo(name, *hw)
    hows = ("blur", "jpeg", "noise")
    degraded = [_degrade(img, how) for how in hows]
    x, y = _nchw(*[img] * len(hows)), _nchw(*degraded)
    want = _sk_ssim(x, y)
    assert (want < 0.99).all() and (want > 0.2).all()  # real degradations, not trivial ones
    np.testing.assert_allclose(ssim(x, y).numpy(), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ssim(x.float(), y.float()).double().numpy(), want, rtol=0, atol=1e-4)


def test_ssim_of_identical_images_is_one():
    x, _ = _noisy_pair((4, 3, 20, 17), 0.0)
    photo = _nchw(_photo("chelsea", 64, 64), dtype=torch.float32)
    for img in (x, photo, torch.zeros(1, 3, 16, 16), torch.ones(1, 1, 11, 11)):
        torch.testing.assert_close(ssim(img, img.clone()), torch.ones(img.shape[0]), rtol=0, atol=1e-6)


def test_ssim_grayscale_matches_skimage():
    x, y = _noisy_pair((3, 1, 24, 30), 0.2, torch.float64, seed=2)
    want = [structural_similarity(a[0].numpy(), b[0].numpy(), gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=1) for a, b in zip(x, y)]
    np.testing.assert_allclose(ssim(x, y).numpy(), want, rtol=0, atol=1e-4)


def test_ssim_data_range_scales_the_constants():
    """On the 0–255 scale with data_range=255, C1 and C2 scale with the images: the same SSIM."""
    x, y = _noisy_pair((2, 3, 16, 19), 0.2, torch.float64, seed=10)
    torch.testing.assert_close(ssim(255 * x, 255 * y, data_range=255), ssim(x, y), rtol=0, atol=1e-12)
    want = [structural_similarity(_hwc(a), _hwc(b), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=255, channel_axis=2) for a, b in zip(255 * x, 255 * y)]
    np.testing.assert_allclose(ssim(255 * x, 255 * y, data_range=255).numpy(), want, rtol=0, atol=1e-4)
    assert (ssim(255 * x, 255 * y) - ssim(x, y)).abs().min() > 3e-4  # the wrong range differs beyond 1e-4


def test_ssim_averages_channels():
    """SSIM of a colour image is the mean of its channels' SSIMs."""
    x, y = _noisy_pair((2, 3, 16, 16), 0.3, torch.float64, seed=3)
    per_channel = torch.stack([ssim(x[:, c:c + 1], y[:, c:c + 1]) for c in range(3)], 1)
    torch.testing.assert_close(ssim(x, y), per_channel.mean(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a, b", [
    ((1, 3, 10, 10), (1, 3, 10, 10)),  # below the 11×11 window
    ((1, 3, 11, 10), (1, 3, 11, 10)),
    ((1, 3, 64, 8), (1, 3, 64, 8)),
    ((1, 3, 16, 16), (1, 3, 16, 17)),  # shapes differ
    ((2, 3, 16, 16), (1, 3, 16, 16)),
    ((1, 3, 16, 16), (1, 1, 16, 16)),
    ((3, 16, 16), (3, 16, 16)),  # not B×C×H×W
])
def test_ssim_rejects_small_or_mismatched_inputs(a, b):
    with pytest.raises(ValueError):
        ssim(torch.rand(a), torch.rand(b))
    with pytest.raises(ValueError):
        ssim_terms(torch.rand(a), torch.rand(b))


def test_ssim_terms_contrast_structure_matches_scipy():
    """The second term, 2σxy + C2 over σx² + σy² + C2, with scipy's Gaussian filter on the valid region."""
    x, y = _noisy_pair((3, 2, 23, 31), 0.25, torch.float64, seed=4)
    full, cs = ssim_terms(x, y)
    r, c2 = SSIM_RADIUS, SSIM_K2 ** 2

    def blur(a):
        return scipy.ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=3.5)[r:-r, r:-r]

    want = []
    for a, b in zip(x.numpy(), y.numpy()):
        per_channel = []
        for ac, bc in zip(a, b):
            mx, my = blur(ac), blur(bc)
            vx, vy, cxy = blur(ac * ac) - mx * mx, blur(bc * bc) - my * my, blur(ac * bc) - mx * my
            per_channel.append(((2 * cxy + c2) / (vx + vy + c2)).mean())
        want.append(np.mean(per_channel))
    np.testing.assert_allclose(cs.numpy(), want, rtol=0, atol=1e-10)
    torch.testing.assert_close(full, ssim(x, y), rtol=0, atol=0)
    assert not torch.allclose(full, cs)  # the luminance factor is really left out of the second


def test_ssim_is_differentiable():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(1, 1, 12, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 1, 12, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: ssim_terms(a, b)[1], (x, y))


def test_ssim_under_bf16_autocast_is_fp32():
    x, y = _noisy_pair((2, 3, 16, 16), 0.2, torch.float32, seed=6)
    want = ssim(x, y)
    leaf = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(leaf, y)
        from_bf16 = ssim(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.float32 and from_bf16.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # nothing ran in bf16
    torch.testing.assert_close(from_bf16, want, rtol=0, atol=2e-2)  # only the inputs were rounded
    (grad,) = torch.autograd.grad(got.sum(), leaf)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- PSNR and MSE --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_psnr_matches_numpy_and_skimage(dtype):
    x, y = _noisy_pair((4, 3, 9, 13), 0.1, dtype, seed=7)
    got = psnr(x, y).double().numpy()
    a, b = x.double().numpy(), y.double().numpy()
    mse = ((a - b) ** 2).reshape(4, -1).mean(1)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(got, 10 * np.log10(1 / mse), rtol=0, atol=tol)
    np.testing.assert_allclose(got, [peak_signal_noise_ratio(p, q, data_range=1) for p, q in zip(a, b)],
                               rtol=0, atol=tol)


def test_psnr_of_identical_images_is_the_floor():
    x, _ = _noisy_pair((3, 3, 8, 8), 0.0)
    assert MSE_FLOOR == 1e-10
    torch.testing.assert_close(psnr(x, x), torch.full((3,), 100.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(psnr(x.double(), x.double()), torch.full((3,), 100.0, dtype=torch.float64),
                               rtol=0, atol=1e-10)


def test_psnr_from_mse_matches_the_tensor_version():
    x, y = _noisy_pair((1, 3, 8, 8), 0.1, torch.float64, seed=11)
    assert psnr_from_mse(mse_per_image(x, y).item()) == pytest.approx(psnr(x, y).item(), rel=1e-12)
    assert psnr_from_mse(0.0) == pytest.approx(100.0) and psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(100.0, data_range=255) == pytest.approx(10 * np.log10(255**2 / 100))


def test_psnr_with_data_range_255():
    x, y = _noisy_pair((3, 3, 10, 10), 0.05, torch.float64, seed=8)
    x, y = 255 * x, 255 * y
    a, b = x.numpy(), y.numpy()
    mse = ((a - b) ** 2).reshape(3, -1).mean(1)
    got = psnr(x, y, data_range=255).numpy()
    np.testing.assert_allclose(got, 10 * np.log10(255**2 / mse), rtol=0, atol=1e-10)
    np.testing.assert_allclose(got, [peak_signal_noise_ratio(p, q, data_range=255) for p, q in zip(a, b)],
                               rtol=0, atol=1e-10)
    # the same images on the [0, 1] scale give the same dB
    np.testing.assert_allclose(got, psnr(x / 255, y / 255).numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype, out", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                        (torch.bfloat16, torch.float32)])
def test_mse_per_image_matches_numpy(dtype, out):
    x, y = _noisy_pair((5, 3, 7, 6), 0.3, dtype, seed=9)
    got = mse_per_image(x, y)
    assert got.dtype == out and got.shape == (5,)
    a, b = x.double().numpy(), y.double().numpy()
    np.testing.assert_allclose(got.double().numpy(), ((a - b) ** 2).reshape(5, -1).mean(1), rtol=1e-6, atol=0)
    assert torch.equal(mse_per_image(x, x), torch.zeros(5, dtype=out))
