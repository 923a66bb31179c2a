"""``cluttered-digits``: the embedded default dataset, generated from scikit-learn's digits.

Each 32x32 RGB image holds one handwritten digit (one of the 1797 8x8 images bundled with
scikit-learn, upscaled to 12-18 px) at a random position, drawn in a bright colour over a cluttered
background: a dark random base colour, several lower-contrast fragments (random crops) of other
digits in other colours, and pixel noise. The label is the digit's class; the box is the tight box
of the digit's ink. A model has to find the digit among similar-looking strokes, which is the setting
where "Learn To Pay Attention" style attention should matter, and the box lets the analysis measure
how much attention lands on the object.

Train and test use disjoint source digits (a fixed, stratified 70/30 split of the 1797 images, the
same for every seed), so test accuracy measures generalisation to unseen handwriting. Generation is
vectorised and deterministic: images are made in chunks of :data:`CHUNK` with a seed derived from
``(seed, split, chunk)``, so the first ``n`` images do not depend on how many are asked for, and
train and test draw on different random streams. Nothing is cached on disk (10,000 images take
about a second).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..utils import derive_seed
from .registry import ImageDataset, check_split, register_dataset

NAME = "cluttered-digits"
CLASSES = [str(d) for d in range(10)]
CHUNK = 1000
#: Seed of the train/test split of the 1797 source digits (fixed: independent of the data seed).
SPLIT_SEED = 2018
TRAIN_FRACTION = 0.7
#: Ink threshold: upscaled intensities below this (of the maximum) count as background.
INK_THRESHOLD = 0.15

# Per-channel statistics of the default settings, measured once with
#   ds = load_dataset("cluttered-digits", split="train", n=10000, seed=0)
#   registry.channel_stats(ds.images)
# (the test split with n=10000, seed=1 agrees within 0.003; colours are drawn symmetrically, so the
# channels agree too). Models built for this dataset normalise with them.
MEAN = (0.1952, 0.1942, 0.1951)
STD = (0.1474, 0.1472, 0.1482)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 scikit-learn digits as float32 (N,8,8) in [0,1] and int64 labels.

    Reads the CSV that ``sklearn.datasets.load_digits`` reads (same values, same order) directly,
    which skips the second it takes to import scikit-learn; falls back to ``load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
            if table.shape == (1797, 65):
                return table[:, :-1].reshape(-1, 8, 8) / 16.0, table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def source_indices(split: str) -> np.ndarray:
    """The indices (into ``sklearn.datasets.load_digits()``) of the source digits of a split.

    A stratified split: per class, a fixed permutation puts the first 70% in ``train`` and the rest
    in ``test``. Sorted ascending. The two splits are disjoint and together cover all 1797.
    """
    check_split(split, name=NAME)
    _, labels = _digits()
    rng = np.random.default_rng(SPLIT_SEED)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(TRAIN_FRACTION * len(members)))
        train.append(members[:k])
        test.append(members[k:])
    return np.sort(np.concatenate(train if split == "train" else test))


@functools.lru_cache(maxsize=8)
def _bank(sizes: tuple[int, ...], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits upscaled to every size: ink ``(S, 1797, M+pad, M+pad)`` (top-left aligned) and
    tight ink boxes ``(S, 1797, 4)`` as (x0, y0, x1, y1), exclusive end, within the patch."""
    images, _ = _digits()
    src = torch.from_numpy(images)[:, None]
    side = max(sizes) + pad
    bank = torch.zeros(len(sizes), src.shape[0], side, side)
    boxes = torch.zeros(len(sizes), src.shape[0], 4)
    for k, s in enumerate(sizes):
        up = torch.nn.functional.interpolate(src, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        up = up.clamp_(0, 1)
        up[up < INK_THRESHOLD] = 0.0
        bank[k, :, :s, :s] = up
        rows, cols = up.amax(dim=2) > 0, up.amax(dim=1) > 0
        ar = torch.arange(s)
        big = s + 1
        boxes[k, :, 0] = torch.where(cols, ar, big).amin(1)
        boxes[k, :, 1] = torch.where(rows, ar, big).amin(1)
        boxes[k, :, 2] = torch.where(cols, ar, -1).amax(1) + 1
        boxes[k, :, 3] = torch.where(rows, ar, -1).amax(1) + 1
    return bank, boxes


def _bright_colours(rng: np.random.Generator, m: int, lo: float, hi: float) -> np.ndarray:
    """Random RGB colours whose brightest channel lies in [lo, hi] (saturation varies freely)."""
    colour = rng.uniform(0.0, 1.0, size=(m, 3)).astype(np.float32)
    colour /= np.maximum(colour.max(axis=1, keepdims=True), 1e-6)
    return colour * rng.uniform(lo, hi, size=(m, 1)).astype(np.float32)


def _place(
    canvas_size: int, offset: int, patches: torch.Tensor, ys: np.ndarray, xs: np.ndarray
) -> torch.Tensor:
    """Paste one ``(W,W)`` patch per image at (ys, xs) (top-left, may be negative down to -offset)
    into a zero map; returns the ``(m, size, size)`` crop of the padded canvas."""
    m, w = patches.shape[0], patches.shape[1]
    full = canvas_size + 2 * offset + w
    canvas = torch.zeros(m, full, full)
    n = torch.arange(m)[:, None, None]
    ii = torch.arange(w)[None, :, None]
    jj = torch.arange(w)[None, None, :]
    ty = torch.from_numpy(ys + offset).long()[:, None, None]
    tx = torch.from_numpy(xs + offset).long()[:, None, None]
    canvas[n, ty + ii, tx + jj] = patches
    return canvas[:, offset : offset + canvas_size, offset : offset + canvas_size]


def _composite(img: torch.Tensor, alpha: torch.Tensor, colour: np.ndarray) -> torch.Tensor:
    """Alpha-blend a flat colour per image over ``img`` in place: ``img + alpha * (colour - img)``."""
    return img.lerp_(torch.from_numpy(colour)[:, :, None, None].expand_as(img), alpha[:, None].expand_as(img))


def _generate_chunk(
    rng: np.random.Generator,
    m: int,
    split_sources: np.ndarray,
    *,
    image_size: int,
    sizes: tuple[int, ...],
    n_fragments: int,
    fragment_size: tuple[int, int],
    fragment_contrast: tuple[float, float],
    noise: float,
) -> dict[str, np.ndarray | torch.Tensor]:
    _, all_labels = _digits()
    frag_w = fragment_size[1]
    bank, bank_boxes = _bank(sizes, frag_w)
    sizes_arr = np.asarray(sizes)

    # Label first (uniform over classes), then a source digit of that class from this split.
    by_class = split_sources[np.argsort(all_labels[split_sources], kind="stable")]
    counts = np.bincount(all_labels[split_sources], minlength=10)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    labels = rng.integers(0, 10, size=m)
    src = by_class[starts[labels] + (rng.random(m) * counts[labels]).astype(np.int64)]

    # Background: a dark base colour per image.
    base = rng.uniform(0.0, 0.3, size=(m, 3)).astype(np.float32)
    img = torch.from_numpy(base)[:, :, None, None].expand(m, 3, image_size, image_size).clone()

    # Clutter: fragments (random crops) of other digits of the split, fainter, in other colours.
    frag_src = np.zeros((m, n_fragments), dtype=np.int64)
    ii = torch.arange(frag_w)[None, :, None]
    jj = torch.arange(frag_w)[None, None, :]
    for f in range(n_fragments):
        fsrc = split_sources[rng.integers(0, len(split_sources), size=m)]
        frag_src[:, f] = fsrc
        fsi = rng.integers(0, len(sizes), size=m)
        fs = sizes_arr[fsi]
        ch = rng.integers(fragment_size[0], fragment_size[1] + 1, size=m)
        cw = rng.integers(fragment_size[0], fragment_size[1] + 1, size=m)
        oy = (rng.random(m) * (fs - ch + 1)).astype(np.int64)
        ox = (rng.random(m) * (fs - cw + 1)).astype(np.int64)
        patch = bank[
            torch.from_numpy(fsi)[:, None, None],
            torch.from_numpy(fsrc)[:, None, None],
            torch.from_numpy(oy)[:, None, None] + ii,
            torch.from_numpy(ox)[:, None, None] + jj,
        ]
        keep = (ii < torch.from_numpy(ch)[:, None, None]) & (jj < torch.from_numpy(cw)[:, None, None])
        contrast = rng.uniform(*fragment_contrast, size=m).astype(np.float32)
        patch = patch * keep * torch.from_numpy(contrast)[:, None, None]
        # Fragments may hang over the border by a few pixels.
        py = rng.integers(-2, image_size - ch + 3, size=m)
        px = rng.integers(-2, image_size - cw + 3, size=m)
        alpha = _place(image_size, frag_w, patch, py, px)
        img = _composite(img, alpha, _bright_colours(rng, m, 0.35, 1.0))

    # The digit, on top, at full contrast and fully inside the image.
    si = rng.integers(0, len(sizes), size=m)
    s = sizes_arr[si]
    y0 = (rng.random(m) * (image_size - s + 1)).astype(np.int64)
    x0 = (rng.random(m) * (image_size - s + 1)).astype(np.int64)
    side = max(sizes)
    patch = bank[torch.from_numpy(si), torch.from_numpy(src)][:, :side, :side]
    alpha = _place(image_size, side, patch, y0, x0)
    img = _composite(img, alpha, _bright_colours(rng, m, 0.8, 1.0))
    boxes = bank_boxes[torch.from_numpy(si), torch.from_numpy(src)]
    boxes = boxes + torch.from_numpy(np.stack([x0, y0, x0, y0], axis=1)).float()

    if noise > 0:
        # torch's normal sampler is several times faster than numpy's; seeded from this chunk's stream.
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        img.add_(torch.randn(img.shape, generator=gen), alpha=noise)
    images = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return {
        "images": images,
        "labels": torch.from_numpy(all_labels[src]),
        "boxes": boxes,
        "source_index": torch.from_numpy(src),
        "fragment_source_index": torch.from_numpy(frag_src),
    }


def _pair(value: object, key: str, cast: type) -> tuple:
    try:
        lo, hi = (cast(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise UserError(f"cluttered-digits: {key} must be a pair [low, high], got {value!r}") from exc
    if lo > hi:
        raise UserError(f"cluttered-digits: {key} must have low <= high, got {value!r}")
    return lo, hi


def _physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits_in_memory(count: int, image_size: int, n_fragments: int) -> None:
    """Refuse, before generating anything, a count whose images cannot fit in this machine's memory.

    The generator has no upper limit of its own: memory is what bounds it. Per image: the uint8
    pixels, the label, box and source indices, held twice while the chunks are joined.
    """
    per_image = 3 * image_size * image_size + 8 + 16 + 8 + 8 * n_fragments
    need = 2 * count * per_image
    total = _physical_memory()
    if total is not None and need > total:
        most = total // (2 * per_image)
        raise UserError(f"cluttered-digits: {count} images of {image_size}x{image_size} need about "
                        f"{need / 2**30:.0f} GiB, more than this machine's {total / 2**30:.0f} GiB of "
                        f"memory: ask for at most {most} (e.g. --n {min(most, 10000)})")


def generate(
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    *,
    n_train: int = 10000,
    n_test: int = 2000,
    image_size: int = 32,
    digit_size: tuple[int, int] = (12, 18),
    n_fragments: int = 6,
    fragment_size: tuple[int, int] = (4, 9),
    fragment_contrast: tuple[float, float] = (0.35, 0.75),
    noise: float = 0.04,
) -> ImageDataset:
    """Generate the cluttered-digits split (``n`` images, default ``n_train``/``n_test``).

    ``digit_size``: range of the digit's side in pixels; ``n_fragments``: clutter fragments per
    image; ``fragment_size``: side range of each fragment crop; ``fragment_contrast``: their opacity
    range (the digit has 1.0); ``noise``: std of the Gaussian pixel noise on the [0, 1] scale.
    ``n_fragments=0, noise=0`` gives clean digits on a flat background.
    """
    check_split(split, name=NAME)
    count = int(n if n is not None else (n_train if split == "train" else n_test))
    if count <= 0:
        raise UserError(f"cluttered-digits: the number of images must be positive, got {count}")
    lo, hi = _pair(digit_size, "digit_size", int)
    f_lo, f_hi = _pair(fragment_size, "fragment_size", int)
    c_lo, c_hi = _pair(fragment_contrast, "fragment_contrast", float)
    if lo < 4 or hi > image_size:
        raise UserError(
            f"cluttered-digits: digit_size must lie in [4, image_size={image_size}], got {digit_size}"
        )
    if f_lo < 1 or f_hi > lo:
        raise UserError(f"cluttered-digits: fragment_size must lie in [1, smallest digit size {lo}]")
    if not 0 <= c_lo <= c_hi <= 1:
        raise UserError("cluttered-digits: fragment_contrast must lie in [0, 1]")
    if n_fragments < 0 or noise < 0:
        raise UserError("cluttered-digits: n_fragments and noise must be >= 0")
    _check_fits_in_memory(count, int(image_size), int(n_fragments))

    sources = source_indices(split)
    settings = dict(
        image_size=int(image_size),
        sizes=tuple(range(lo, hi + 1)),
        n_fragments=int(n_fragments),
        fragment_size=(f_lo, f_hi),
        fragment_contrast=(c_lo, c_hi),
        noise=float(noise),
    )
    parts = []
    for k in range(-(-count // CHUNK)):
        rng = np.random.default_rng(derive_seed(seed, NAME, split, k))
        # Always a whole chunk (the random draws are batched per chunk), then cut to size.
        parts.append(_generate_chunk(rng, CHUNK, sources, **settings))
    cat = {key: torch.cat([p[key] for p in parts])[:count] for key in parts[0]}
    return ImageDataset(
        cat["images"],
        cat["labels"],
        classes=CLASSES,
        name=NAME,
        mean=MEAN,
        std=STD,
        boxes=cat["boxes"],
        extras={"source_index": cat["source_index"], "fragment_source_index": cat["fragment_source_index"]},
        meta={"split": split, "seed": seed, "generator": {**settings, "sizes": [lo, hi]}},
    )


@register_dataset(
    NAME,
    description="one handwritten digit (scikit-learn) among clutter, 32x32, with boxes; built in",
    num_classes=10,
    image_size=(32, 32),
    mean=MEAN,
    std=STD,
    has_boxes=True,
)
def load_cluttered_digits(
    split: str,
    root: Path,
    download: bool,
    n: int | None,
    seed: int,
    n_train: int = 10000,
    n_test: int = 2000,
    image_size: int = 32,
    digit_size: tuple[int, int] = (12, 18),
    n_fragments: int = 6,
    fragment_size: tuple[int, int] = (4, 9),
    fragment_contrast: tuple[float, float] = (0.35, 0.75),
    noise: float = 0.04,
) -> ImageDataset:
    """Registry loader: ``root`` and ``download`` are ignored (the data is generated)."""
    return generate(
        split,
        n,
        seed,
        n_train=n_train,
        n_test=n_test,
        image_size=image_size,
        digit_size=digit_size,
        n_fragments=n_fragments,
        fragment_size=fragment_size,
        fragment_contrast=fragment_contrast,
        noise=noise,
    )
