"""Glyph identities: each character of the fonts matplotlib ships is one identity.

Offline, real and plentiful data for embedding learning and open-set tests: the
DejaVu (Sans, Serif, Mono), STIX and Computer Modern fonts in matplotlib's wheel give
thousands of characters, each drawn in up to 16 fonts, weights and styles. An image
is one character rendered with PIL in one of the fonts that has it, then augmented:
stroke width, rotation, scale, shift, an elastic warp, ink and paper colours and
pixel noise, all drawn from ``seed``, so the same call gives the same pixels.

    images, labels, names = glyphs(identities=500, per_identity=8, image_size=32)
    test = glyphs(identities=100, per_identity=8, split="test")   # other identities

The split of identities is fixed (a hash of the character, not the seed): a train and
a test set never share an identity, whatever seeds or counts draw them. An identity is
a character that

- has an outline in at least ``MIN_FONTS`` of the fonts (so its images vary in style),
- is a letter, digit, punctuation or symbol (no spaces, controls or combining marks),
- is its own compatibility form (``NFKC(c) == c``: no superscripts, ligatures or
  full-width copies of another identity), and
- does not render exactly as an earlier character in DejaVu Sans, Serif or Mono
  (Latin ``A``, Greek ``Α`` and Cyrillic ``А`` share one outline: one identity).

Shapes that are merely alike (``l`` and ``I`` in a sans font, ``O`` and ``0``) stay
separate identities, as faces of look-alike people do.

``identity_folders(root, image_size)`` loads the same arrays from users' own
``root/<identity>/*.jpg`` folders (faces, products), through the folder loader.
"""

from __future__ import annotations

import functools
import os
import unicodedata
import zlib

import numpy as np

SPLITS = ("train", "test")
MIN_FONTS = 4
TEST_FRACTION = 5          # one identity in 5 is a test identity
_TEXT_CATEGORIES = ("L", "N", "P", "S")
# Computer Modern's charmaps put other shapes at many punctuation code points (OT1
# encoding): only its letters and digits are the characters they claim to be.
_CM_FONTS = ("cmb10.ttf", "cmmi10.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf",
             "cmtt10.ttf")
_ASCII_ALNUM = frozenset(map(ord, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "abcdefghijklmnopqrstuvwxyz0123456789"))
_REFERENCE_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
_SUPERSAMPLE = 2           # glyphs are drawn at twice the size, then averaged down
_CHUNK = 256


def font_dir():
    """Where matplotlib keeps its TrueType fonts."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_files():
    """The text fonts used, sorted: DejaVu Sans/Serif/Mono in all weights and styles,
    STIX General in four, Computer Modern in six. Left out: the size variants and
    private-use fonts of STIX, ``cmex10``/``cmsy10`` (symbols at letter code points),
    the two "Display" subsets and LastResort (one placeholder for every code point)."""
    names = sorted(os.listdir(font_dir()))
    keep = [n for n in names if n.endswith(".ttf") and (
        (n.startswith("DejaVu") and "Display" not in n)
        or n.startswith("STIXGeneral") or n in _CM_FONTS)]
    return tuple(keep)


@functools.lru_cache(maxsize=1)
def _charmaps():
    """``{font file: frozenset of code points it draws}``."""
    from matplotlib.ft2font import FT2Font

    maps = {}
    for name in font_files():
        codes = set(FT2Font(os.path.join(font_dir(), name)).get_charmap())
        maps[name] = frozenset(codes & _ASCII_ALNUM if name in _CM_FONTS else codes)
    return maps


def _is_text(code):
    char = chr(code)
    return (unicodedata.category(char)[0] in _TEXT_CATEGORIES
            and unicodedata.normalize("NFKC", char) == char)


@functools.lru_cache(maxsize=None)
def _font(name, size):
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(font_dir(), name), size)


def _draw(char, font_name, canvas, stroke=0):
    """``char`` drawn white on black on a ``canvas`` × ``canvas`` uint8 image, at 70%
    of the canvas in em size. Anchored at the middle of its advance and of the font's
    ascender-to-descender span, not of its ink, so that position tells apart what
    only position does (``.`` and ``·``, ``-`` and ``_``)."""
    from PIL import Image, ImageDraw

    font = _font(font_name, int(round(canvas * 0.7)))
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text((canvas / 2, canvas / 2), char, fill=255, font=font,
                               anchor="mm", stroke_width=stroke, stroke_fill=255)
    return np.asarray(image)


@functools.lru_cache(maxsize=1)
def _all_identities():
    """Every identity, in the fixed order used to take the first N of a split."""
    maps = _charmaps()
    counts = {}
    for codes in maps.values():
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    codes = sorted(c for c, n in counts.items() if n >= MIN_FONTS and _is_text(c))
    kept, seen = [], set()
    for code in codes:           # in code-point order: the earlier character stays
        shapes = [(font, _draw(chr(code), font, 24).tobytes())
                  for font in _REFERENCE_FONTS if code in maps[font]]
        if not shapes or not any(np.frombuffer(s, "uint8").any() for _, s in shapes):
            continue             # drawn in no reference font, or blank
        if any(shape in seen for shape in shapes):
            continue
        seen.update(shapes)
        kept.append(chr(code))
    # a hash order, so the first N identities mix scripts instead of being Latin only
    return tuple(sorted(kept, key=lambda c: (zlib.crc32(c.encode("utf-8")), c)))


def identities(split="train"):
    """The characters of one split, in the order ``glyphs(identities=N)`` takes
    them. Train and test never share a character; the split depends on the character
    alone (its CRC-32), never on a seed or on how many are asked for."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    test = split == "test"
    return tuple(c for c in _all_identities()
                 if (zlib.crc32(c.encode("utf-8")) % TEST_FRACTION == 0) == test)


def fonts_for(char):
    """The font files that draw ``char``, sorted."""
    return tuple(name for name, codes in _charmaps().items() if ord(char) in codes)


# -- rendering ---------------------------------------------------------------------
def glyphs(identities=100, per_identity=10, image_size=32, split="train", seed=0,
           augment=True):
    """Seeded images of glyph identities.

    ``identities``: how many (the first N of ``split``, see :func:`identities`) or
    the characters themselves (each must be an identity of ``split``).
    ``per_identity``: images of each. ``image_size``: int or ``(height, width)``.
    ``augment=False`` draws each glyph plainly (black on white, centred, no stroke,
    warp or noise), still cycling through the fonts that have it.

    Returns ``(images, labels, class_names)``: uint8 ``(N, H, W, 3)``, int64 ``(N,)``
    indices into ``class_names`` (the characters), identity by identity.
    """
    from kvision.data.folders import as_size

    height, width = as_size(image_size)
    names = _chosen(identities, split)   # the argument, not the function
    per_identity = _positive_int(per_identity, "per_identity")
    labels = np.repeat(np.arange(len(names), dtype="int64"), per_identity)
    rng = np.random.default_rng(seed)
    n = len(labels)
    fonts = [fonts_for(c) for c in names]
    font_pick = rng.random(n)
    if augment:                     # every random choice is drawn up front, per image
        stroke = rng.integers(0, 3, n)
        moves = (_random_affine(rng, n), _random_elastic(rng, n))
        colours = _random_colours(rng, n)
    images = np.empty((n, height, width, 3), "uint8")
    canvas = max(height, width) * _SUPERSAMPLE
    # a chunk at a time: the warp's gathers stay in cache (3x faster than all at once)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        clean = np.stack([
            _draw(names[label], fonts[label][int(pick * len(fonts[label]))], canvas,
                  int(stroke[i]) if augment else 0)
            for i, label, pick in zip(range(start, n), labels[part], font_pick[part])])
        ink = _downsample(clean.astype("float32") / 255.0, _SUPERSAMPLE)
        if augment:
            ink = _warp(ink, moves[0][part], moves[1][part], height, width)
            images[part] = _colour(ink, [c[part] for c in colours], rng)
        else:                       # black on white
            ink = _warp(ink, None, None, height, width)
            images[part] = _to_uint8(255.0 * (1.0 - ink)[..., None])
    return images, labels, names


def _chosen(wanted, split):
    """The class names a call asks for (a count or characters), checked against the
    split."""
    available = identities(split)
    if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool):
        if not 1 <= wanted <= len(available):
            raise ValueError(f"identities must be between 1 and {len(available)} (the "
                             f"{split} split's size), got {wanted}.")
        return available[:int(wanted)]
    names = tuple(wanted)
    wrong = [c for c in names if c not in set(available)]
    if not names or wrong:
        other = set(identities("test" if split == "train" else "train"))
        where = ", ".join(f"{c!r} ({'the other split' if c in other else 'no identity'})"
                          for c in wrong[:10])
        raise ValueError(f"identities must be a count or characters of the {split} "
                         f"split; got {len(names)} name(s), not in it: {where or '-'}.")
    if len(set(names)) != len(names):
        raise ValueError(f"identities repeat a character: {names}.")
    return names


def _positive_int(value, what):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _downsample(images, factor):
    """Average ``factor`` × ``factor`` blocks: the anti-aliasing of the supersampling."""
    n, h, w = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _random_affine(rng, n, max_degrees=15.0, scale=(0.8, 1.1), shift=0.08):
    """``(n, 2, 3)`` maps from output to source coordinates (both in [-1, 1])."""
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees, n))
    zoom = rng.uniform(*scale, n)
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    offset = rng.uniform(-shift, shift, (n, 2))
    return np.stack([np.stack([cos, -sin, offset[:, 0]], -1),
                     np.stack([sin, cos, offset[:, 1]], -1)], 1)


def _random_elastic(rng, n, grid=4, strength=0.06):
    """Smooth random displacements: ``(n, 2, grid, grid)`` control offsets, in the
    [-1, 1] coordinate units, interpolated over the image by :func:`_warp`."""
    return rng.normal(0.0, strength, (n, 2, grid, grid))


def _warp(images, affine, elastic, height, width):
    """Sample square float ``images`` ``(n, S, S)`` at the affine-and-elastically
    moved points of a ``(height, width)`` grid, bilinearly, zero (no ink) outside."""
    n, size, _ = images.shape
    ys, xs = np.meshgrid(np.linspace(-1, 1, height) * height / max(height, width),
                         np.linspace(-1, 1, width) * width / max(height, width),
                         indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]).astype("float32")
    if affine is None:                                                   # no move
        affine = np.tile(np.eye(2, 3, dtype="float32"), (n, 1, 1))
    points = affine.astype("float32") @ grid                             # (n, 2, P)
    if elastic is not None:
        points = points + _upsample(elastic, height, width).reshape(n, 2, -1)
    # [-1, 1] -> pixel centres of the source
    x = (points[:, 0] + 1.0) * ((size - 1) / 2.0)
    y = (points[:, 1] + 1.0) * ((size - 1) / 2.0)
    return _bilinear(images, x, y).reshape(n, height, width)


def _upsample(fields, height, width):
    """Bilinear interpolation of ``(n, 2, g, g)`` control values to ``(n, 2, H, W)``:
    two small matrix products (interpolation weights along y, then along x)."""
    g = fields.shape[-1]
    rows = _interpolation(g, height) @ fields.astype("float32")          # (n, 2, H, g)
    return rows @ _interpolation(g, width).T


def _interpolation(g, size):
    """``(size, g)`` linear-interpolation weights from ``g`` evenly spaced controls."""
    t = np.linspace(0, g - 1, size)
    low = np.minimum(t.astype(int), g - 2)
    weights = np.zeros((size, g), "float32")
    weights[np.arange(size), low] = 1 - (t - low)
    weights[np.arange(size), low + 1] = t - low
    return weights


def _bilinear(images, x, y):
    """Values of ``images`` ``(n, S, S)`` at float pixel positions ``(n, P)``."""
    n, size, _ = images.shape
    stride = size + 2
    flat = np.pad(images, ((0, 0), (1, 1), (1, 1))).ravel()   # zero ink outside
    x = np.clip(x + 1.0, 0.0, size + 0.999, dtype="float32")
    y = np.clip(y + 1.0, 0.0, size + 0.999, dtype="float32")
    x0, y0 = x.astype("int32"), y.astype("int32")
    fx, fy = x - x0, y - y0
    # one flat index per point: image offset + row * stride + column
    base = (y0 * stride + x0 + (np.arange(n, dtype="int32") * stride * stride)[:, None])
    top = flat[base] * (1 - fx) + flat[base + 1] * fx
    bottom = flat[base + stride] * (1 - fx) + flat[base + stride + 1] * fx
    return top * (1 - fy) + bottom * fy


def _random_colours(rng, n, min_contrast=90.0, max_noise=12.0):
    """Paper and ink RGB ``(n, 3)`` at least ``min_contrast`` grey levels apart, and a
    noise level ``(n,)`` per image."""
    paper = rng.uniform(0, 255, n)
    away = rng.uniform(min_contrast, 255, n)
    dark = np.where(paper - away >= 0, True, paper + away > 255)
    ink_level = np.clip(np.where(dark, paper - away, paper + away), 0, 255)
    tint = rng.uniform(-20, 20, (2, n, 3))
    return (np.clip(paper[:, None] + tint[0], 0, 255),
            np.clip(ink_level[:, None] + tint[1], 0, 255),
            rng.uniform(0, max_noise, n))


def _colour(ink, colours, rng):
    """Ink coverage ``(n, H, W)`` in [0, 1] -> uint8 RGB between the paper and ink
    colours, plus Gaussian pixel noise."""
    paper, ink_rgb, noise = (c.astype("float32") for c in colours)
    images = paper[:, None, None, :] + (ink_rgb - paper)[:, None, None, :] * ink[..., None]
    images += noise[:, None, None, None] * rng.standard_normal(images.shape, "float32")
    return _to_uint8(images)


def _to_uint8(images):
    return np.clip(np.round(images), 0, 255).astype("uint8")


# -- users' own identities ---------------------------------------------------------
def identity_folders(root, image_size=112, on_corrupt="warn", batch_size=256):
    """Images of ``root/<identity>/*.jpg`` (faces, products: one folder per identity)
    as the same ``(images, labels, class_names)`` as :func:`glyphs`: uint8
    ``(N, H, W, 3)``, resized bilinearly without crop. Listing, the check that every
    file decodes and the decoding itself are the image-folder loader's
    (:func:`kvision.data.folders.list_images`), so a bad file is named by its path."""
    from kvision.data.folders import as_size, image_dataset, list_images

    size = as_size(image_size)
    paths, labels, names = list_images(root, on_corrupt=on_corrupt)
    batches = image_dataset(paths, labels, size).batch(batch_size)
    images = np.concatenate([_to_uint8(x.numpy()) for x, _ in batches])
    return images, labels, names
