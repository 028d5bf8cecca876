"""model.metrics spectrum, regions and diversity: blur, where the error sits, the "average face"."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from skimage import data as skdata
from skimage.transform import resize

from model.metrics import (attribute_errors, face_ellipse_mask, high_frequency_energy, mean_distance_to,
                           mean_pairwise_distance, mse_per_image, region_mse, sharpness_ratio)
from model.metrics.regions import FACE_AXES, FACE_CENTER
from model.metrics.spectrum import CUTOFF
from tests.utils import single_thread  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def _faces(n: int = 2, size: int = 64) -> torch.Tensor:
    """n crops of the astronaut photograph (a face and its surroundings), N×3×size×size fp64 in [0, 1]."""
    img = skdata.astronaut().astype(np.float64) / 255
    crops = [resize(img[30 + 40 * i:30 + 40 * i + 256, 120 + 40 * i:120 + 40 * i + 256], (size, size),
                    anti_aliasing=True) for i in range(n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.from_numpy(scipy.ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma)))


def _sinusoid(freq: float, h: int = 64, w: int = 64) -> torch.Tensor:
    """1×1×H×W cos(2π·freq·column), a pure horizontal frequency in cycles per pixel."""
    col = torch.arange(w, dtype=F64)
    return (0.5 + 0.5 * torch.cos(2 * math.pi * freq * col))[None, :].expand(h, w)[None, None].clone()


# --- spectrum ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(64, 64), (33, 48), (20, 31)], ids=lambda s: "x".join(map(str, s)))
def test_high_frequency_energy_matches_a_full_numpy_fft(hw):
    """The rfft2 half-spectrum with its mirrored columns counted twice = the full FFT's sum."""
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0), dtype=F64)
    h, w = hw
    a = x.numpy() - x.numpy().mean(axis=(-2, -1), keepdims=True)
    a = a * np.hanning(h)[:, None] * np.hanning(w)[None, :]
    power = np.abs(np.fft.fft2(a)) ** 2
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    want = (power * (radius > CUTOFF)).reshape(2, -1).sum(1)
    np.testing.assert_allclose(high_frequency_energy(x).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(high_frequency_energy(x.float()).double().numpy(), want, rtol=1e-4)


def test_sharpness_of_an_image_against_itself_is_one():
    x = _faces()
    assert sharpness_ratio(x, x).item() == 1.0
    assert sharpness_ratio(x.float(), x.float()).item() == 1.0


def test_blur_lowers_sharpness_monotonically_with_sigma():
    x = _faces()
    ratios = [sharpness_ratio(_blur(x, s), x).item() for s in (0.5, 0.8, 1.2, 2.0, 3.0)]
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[0] < 0.9 and ratios[-1] < 0.01, ratios


def test_high_frequency_noise_raises_sharpness():
    x = _faces()
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert sharpness_ratio(noisy, x).item() > 1.1


def test_sharpness_ratio_pools_the_batch():
    """Energy summed over the batch, then divided: not a mean of per-image ratios."""
    x = _faces()
    y = _blur(x, 1.0)
    e_y, e_x = high_frequency_energy(y), high_frequency_energy(x)
    assert sharpness_ratio(y, x).item() == pytest.approx((e_y.sum() / e_x.sum()).item(), rel=1e-12)
    assert sharpness_ratio(y, x).item() != pytest.approx((e_y / e_x).mean().item(), rel=1e-3)


def test_high_frequency_energy_of_constant_and_sinusoids():
    flat = torch.full((1, 3, 64, 64), 0.37, dtype=F64)
    assert high_frequency_energy(flat).item() < 1e-20
    assert high_frequency_energy(flat.float()).item() < 1e-9
    wave = _sinusoid(0.4)  # above the 0.25 cut-off
    high = high_frequency_energy(wave).item()
    # Parseval: all of the windowed image's energy, H·W·Σ((x − x̄)·window)², lies above the cut-off
    a = wave[0, 0].numpy()
    total = a.size * (((a - a.mean()) * np.hanning(64)[:, None] * np.hanning(64)[None, :]) ** 2).sum()
    assert high == pytest.approx(total, rel=1e-3) and high > 1e5
    low = high_frequency_energy(_sinusoid(0.05)).item()  # 12.8 bins below the cut-off: only window leakage
    assert low < 1e-5 * high
    # just above vs just below the cut-off
    assert high_frequency_energy(_sinusoid(0.3)).item() > 1e4 > 1e3 > high_frequency_energy(_sinusoid(0.15)).item()


def test_high_frequency_energy_ignores_an_added_constant():
    x = _faces()
    torch.testing.assert_close(high_frequency_energy(x + 0.25), high_frequency_energy(x), rtol=1e-10, atol=0)
    x32 = x.float()
    torch.testing.assert_close(high_frequency_energy(x32 + 0.25), high_frequency_energy(x32), rtol=1e-4, atol=0)


# --- regions -------------------------------------------------------------------------------------

def test_face_ellipse_is_centred_as_documented():
    for h, w in ((256, 256), (64, 64), (96, 80)):
        mask = face_ellipse_mask(h, w)
        assert mask.shape == (h, w) and mask.dtype == torch.bool
        rows, cols = torch.nonzero(mask, as_tuple=True)
        cy, cx = ((rows.double() + 0.5) / h).mean().item(), ((cols.double() + 0.5) / w).mean().item()
        assert cx == pytest.approx(FACE_CENTER[0], abs=1 / w) and cy == pytest.approx(FACE_CENTER[1], abs=1 / h)
        assert torch.equal(mask, mask.flip(1))  # left-right symmetric about the centre column
        area = mask.double().mean().item()
        assert area == pytest.approx(math.pi * FACE_AXES[0] * FACE_AXES[1], rel=0.03 if h < 100 else 0.01)
        assert not mask[0].any() and not mask[:, 0].any() and not mask[:, -1].any()


def test_face_ellipse_edges_on_a_100_pixel_grid():
    """Pixel centres (i + 0.5)/100: the ellipse spans x ∈ [0.2, 0.8] and y ∈ [0.18, 0.94]."""
    mask = face_ellipse_mask(100, 100)
    assert torch.nonzero(mask[56]).flatten().tolist() == list(range(20, 80))
    col = torch.nonzero(mask[:, 50]).flatten().tolist()
    assert col == list(range(18, 94))
    custom = face_ellipse_mask(100, 100, center=(0.25, 0.75), axes=(0.1, 0.1))
    assert custom.double().mean().item() == pytest.approx(math.pi * 0.01, rel=0.02)
    assert custom[75, 25] and not custom[25, 75] and not custom[75, 36]


def test_region_mse_separates_inside_from_outside():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 32, 24, generator=gen)
    mask = face_ellipse_mask(32, 24)
    outside_only = x + 0.1 * (~mask)
    inside, outside = region_mse(outside_only, x, mask)
    assert inside.shape == outside.shape == (3,)
    assert torch.equal(inside, torch.zeros(3))
    torch.testing.assert_close(outside, torch.full((3,), 0.01), rtol=1e-5, atol=0)

    inside, outside = region_mse(x - 0.2 * mask, x, mask)
    torch.testing.assert_close(inside, torch.full((3,), 0.04), rtol=1e-5, atol=0)
    assert torch.equal(outside, torch.zeros(3))

    # one channel wrong by 0.3 inside: averaged over the 3 channels; per image
    y = x.clone()
    y[1, 0] += 0.3 * mask
    inside, outside = region_mse(y, x, mask)
    torch.testing.assert_close(inside, torch.tensor([0.0, 0.09 / 3, 0.0]), rtol=1e-5, atol=1e-9)
    assert torch.equal(outside, torch.zeros(3))


def test_region_mse_needs_both_sides():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError):
        region_mse(x, x, torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError):
        region_mse(x, x, torch.zeros(8, 8, dtype=torch.bool))


# --- attributes ----------------------------------------------------------------------------------

NAMES = ["Young", "Eyeglasses", "Wearing_Hat", "Bald"]
N_IMG, H, W, BAND = 12, 20, 16, 10
HATS, GLASSES = range(0, 4), range(3, 9)  # one image has both
BASE, EXTRA = 0.001, 0.02  # squared error per pixel everywhere; more in the top BAND rows of hat images


def _attribute_set():
    """Per-image MSEs from images whose error is put in pixel by pixel, and the N×A bool attributes."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(N_IMG, 3, H, W, generator=gen, dtype=F64)
    sq = torch.full((N_IMG, 3, H, W), BASE, dtype=F64)
    sq[list(HATS), :, :BAND] += EXTRA
    sign = torch.randint(0, 2, sq.shape, generator=gen).mul(2).sub(1)
    errors = mse_per_image(x + sign * sq.sqrt(), x)
    attrs = torch.zeros(N_IMG, len(NAMES), dtype=torch.bool)
    attrs[:, 0] = True  # everyone is young
    attrs[list(GLASSES), 1] = True
    attrs[list(HATS), 2] = True
    return errors, attrs


def test_hats_rank_first_with_the_expected_ratio():
    errors, attrs = _attribute_set()
    hat_mse, plain = BASE + EXTRA * BAND / H, BASE  # 0.011 and 0.001 per image
    torch.testing.assert_close(errors, torch.tensor([hat_mse] * 4 + [plain] * 8, dtype=F64), rtol=1e-12, atol=0)
    rows = attribute_errors(errors, attrs, NAMES)
    assert [r["attribute"] for r in rows] == ["Wearing_Hat", "Eyeglasses", "Young", "Bald"]

    hat = rows[0]
    assert (hat["count_with"], hat["count_without"]) == (4, 8)
    assert hat["mse_with"] == pytest.approx(hat_mse, rel=1e-12)
    assert hat["mse_without"] == pytest.approx(plain, rel=1e-12)
    assert hat["ratio"] == pytest.approx(11.0, rel=1e-12)

    glasses = rows[1]  # images 3..8: one hat of six; without: three hats of six
    assert (glasses["count_with"], glasses["count_without"]) == (6, 6)
    assert glasses["ratio"] == pytest.approx((hat_mse + 5 * plain) / (3 * hat_mse + 3 * plain), rel=1e-12)

    young, bald = rows[2], rows[3]  # everyone / no one: nothing to compare, ranked last in names' order
    assert young["ratio"] is None and (young["count_with"], young["count_without"]) == (12, 0)
    assert young["mse_without"] is None and young["mse_with"] == pytest.approx((4 * hat_mse + 8 * plain) / 12)
    assert bald["ratio"] is None and bald["mse_with"] is None and (bald["count_with"], bald["count_without"]) == (0, 12)


def test_plus_minus_one_attributes_work_like_bool():
    errors, attrs = _attribute_set()
    celeba = attrs.long() * 2 - 1  # list_attr_celeba.txt's encoding
    assert attribute_errors(errors, celeba, NAMES) == attribute_errors(errors, attrs, NAMES)
    assert attribute_errors(errors.float(), celeba.to(torch.int8), NAMES)[0]["attribute"] == "Wearing_Hat"


def test_min_count_sets_thin_attributes_aside():
    errors, attrs = _attribute_set()
    rows = attribute_errors(errors, attrs, NAMES, min_count=5)
    by_name = {r["attribute"]: r for r in rows}
    assert by_name["Wearing_Hat"]["ratio"] is None and by_name["Wearing_Hat"]["count_with"] == 4
    assert by_name["Wearing_Hat"]["mse_with"] == pytest.approx(BASE + EXTRA * BAND / H)
    assert rows[0]["attribute"] == "Eyeglasses" and rows[0]["ratio"] is not None


# --- diversity -----------------------------------------------------------------------------------

def _brute_pairwise(x: np.ndarray) -> float:
    n, d = x.shape[0], x[0].size
    dists = [np.sqrt(((x[i] - x[j]) ** 2).sum() / d) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(dists))


@pytest.mark.parametrize("n", [2, 3, 7, 10])
def test_mean_pairwise_distance_matches_a_double_loop(n):
    x = torch.rand(n, 3, 5, 4, generator=torch.Generator().manual_seed(n))
    want = _brute_pairwise(x.double().numpy())
    got = mean_pairwise_distance(x)
    assert got.dtype == F64 and got.shape == ()
    assert got.item() == pytest.approx(want, rel=1e-10)
    for chunk in (1, 3, n - 1):
        assert mean_pairwise_distance(x, chunk=chunk).item() == pytest.approx(got.item(), rel=1e-12)


def test_mean_pairwise_distance_of_identical_images_is_zero():
    x = torch.rand(1, 3, 6, 6).expand(5, -1, -1, -1)
    assert mean_pairwise_distance(x).item() == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_distance(x, chunk=3).item() == pytest.approx(0.0, abs=1e-12)
    # two distinct values among identical images: 1 pair in 3 at RMS distance 1
    pair = torch.stack([torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2)])
    assert mean_pairwise_distance(pair).item() == pytest.approx(2 / 3, rel=1e-12)


def test_mean_pairwise_distance_needs_two_images():
    with pytest.raises(ValueError):
        mean_pairwise_distance(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError):
        mean_pairwise_distance(torch.rand(0, 3, 4, 4))


def test_mean_distance_to_matches_numpy():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 5, 7, generator=gen)
    ref = x.mean(0)
    a, r = x.double().numpy(), ref.double().numpy()
    want = np.mean([np.sqrt(((img - r) ** 2).mean()) for img in a])
    got = mean_distance_to(x, ref)
    assert got.dtype == F64 and got.item() == pytest.approx(want, rel=1e-12)
    assert mean_distance_to(x, ref[None]).item() == pytest.approx(want, rel=1e-12)  # 1×C×H×W broadcasts too
    assert mean_distance_to(x, x[2]).item() == pytest.approx(
        np.mean([np.sqrt(((img - a[2]) ** 2).mean()) for img in a]), rel=1e-12)
