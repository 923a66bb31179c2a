"""Attention drift measures on tiny hand-made maps (values worked out by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from robustbench_lta.analysis import box_mass, js_divergence, upsample_map


def _onehot(h: int, w: int, y: int, x: int) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[y, x] = 1.0
    return m


def test_js_identical_disjoint_and_bounds() -> None:
    uni = torch.full((2, 3, 3), 1 / 9)
    assert torch.allclose(js_divergence(uni, uni), torch.zeros(2), atol=1e-6)
    # disjoint supports: exactly 1 bit (base-2 logs), zeros in the maps are safe
    p = torch.stack([_onehot(2, 2, 0, 0), _onehot(2, 2, 1, 1)])
    q = torch.stack([_onehot(2, 2, 1, 1), _onehot(2, 2, 0, 1)])
    assert torch.allclose(js_divergence(p, q), torch.ones(2), atol=1e-6)
    # symmetric, finite and within [0, 1] on random maps
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 4, 4, generator=g)
    b = torch.rand(5, 4, 4, generator=g)
    a, b = a / a.sum((1, 2), keepdim=True), b / b.sum((1, 2), keepdim=True)
    js = js_divergence(a, b)
    assert js.shape == (5,) and torch.isfinite(js).all()
    assert ((js >= 0) & (js <= 1)).all()
    assert torch.allclose(js, js_divergence(b, a), atol=1e-6)


def test_js_by_hand() -> None:
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4)
    # JS = 1/2 [1 log2(4/3)] + 1/2 [1/2 log2(2/3) + 1/2 log2(2)]
    p = torch.tensor([[[1.0, 0.0]]])
    q = torch.tensor([[[0.5, 0.5]]])
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2))
    assert js_divergence(p, q).item() == pytest.approx(expected, abs=1e-6)


def test_box_mass_same_resolution() -> None:
    m = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    m = m / m.sum()
    # box x in [1,3), y in [0,2): cells (0,1),(0,2),(1,1),(1,2) -> values 1,2,5,6 of total 120
    got = box_mass(m, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), (4, 4))
    assert got.item() == pytest.approx(14 / 120, abs=1e-6)
    # whole image -> 1; empty box -> 0
    full = box_mass(m, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (4, 4))
    empty = box_mass(m, torch.tensor([[2.0, 2.0, 2.0, 3.0]]), (4, 4))
    assert full.item() == pytest.approx(1.0, abs=1e-6) and empty.item() == pytest.approx(0.0, abs=1e-7)


def test_box_mass_coarser_map_partial_cells() -> None:
    # 2x2 map on an 8x8 image: each map cell covers 4x4 pixels
    uni = torch.full((1, 2, 2), 0.25)
    # box x in [0,6), y in [0,4): left cell column fully, right column half; top row only
    got = box_mass(uni, torch.tensor([[0.0, 0.0, 6.0, 4.0]]), (8, 8))
    assert got.item() == pytest.approx(0.25 * 1.0 + 0.25 * 0.5, abs=1e-6)
    # a box inside a single cell counts that cell by its covered area (2x2 of 4x4 pixels)
    peak = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    got = box_mass(peak, torch.tensor([[1.0, 1.0, 3.0, 3.0]]), (8, 8))
    assert got.item() == pytest.approx(0.25, abs=1e-6)
    # batch of different boxes on non-square images (H=4, W=8, map 2x4)
    maps = torch.full((2, 2, 4), 1 / 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    assert torch.allclose(box_mass(maps, boxes, (4, 8)), torch.tensor([0.5, 0.5]), atol=1e-6)


def test_upsample_map_keeps_mass_and_shape() -> None:
    m = torch.tensor([[0.7, 0.1], [0.1, 0.1]])
    up = upsample_map(m, (8, 8))
    assert up.shape == (8, 8) and up.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert up[0, 0] > up[7, 7]  # the peak stays in its corner
    batch = upsample_map(torch.full((3, 4, 4), 1 / 16), (16, 16))
    assert batch.shape == (3, 16, 16)
    assert torch.allclose(batch, torch.full((3, 16, 16), 1 / 256), atol=1e-7)
