"""Glyph identities: seeded, split without overlap, each image the character it
claims (checked against an independent PIL drawing), and the folder loader."""

import os
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from kvision.data import glyphs as g


def test_thousands_of_identities_in_two_disjoint_fixed_splits():
    train, test = g.identities("train"), g.identities("test")
    assert len(train) > 3000 and len(test) > 700
    assert not set(train) & set(test)
    # the split is a property of the character: asking for fewer, or with another
    # seed, never moves one across
    _, _, few = g.glyphs(identities=50, per_identity=1, image_size=8, split="test", seed=3)
    assert few == test[:50]
    # Latin A, Greek Alpha and Cyrillic A share DejaVu's outline: one identity
    assert sum(c in set(train) | set(test) for c in "A\u0391\u0410") == 1
    for c in train[:200]:
        assert len(g.fonts_for(c)) >= g.MIN_FONTS


def test_seeded_and_reproducible():
    a = g.glyphs(identities=20, per_identity=3, image_size=24, seed=7)
    b = g.glyphs(identities=20, per_identity=3, image_size=24, seed=7)
    c = g.glyphs(identities=20, per_identity=3, image_size=24, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (60, 24, 24, 3) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[1], np.repeat(np.arange(20), 3))
    assert a[2] == c[2] and np.mean(a[0] != c[0]) > 0.5


def test_plain_images_are_the_character_in_one_of_its_fonts():
    """An independent drawing: each character centred with PIL at the same em size in
    every font that has it; the plain image must match one of them closely."""
    images, labels, names = g.glyphs(identities=["&", "g", "\u2260"], per_identity=4,
                                     image_size=32, augment=False)
    for image, label in zip(images, labels):
        ink = 1.0 - image[..., 0].astype(float) / 255.0
        errors = []
        for font in g.fonts_for(names[label]):
            canvas = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(canvas).text(
                (32, 32), names[label], fill=255, anchor="mm",
                font=ImageFont.truetype(os.path.join(g.font_dir(), font), 45))
            ref = np.asarray(canvas.resize((32, 32), Image.BOX), float) / 255.0
            errors.append(np.abs(ref - ink).mean())
        assert min(errors) < 0.02, (names[label], min(errors))
        # and it is not just any glyph: another identity's drawing is far off
        assert min(errors) < 0.5 * np.abs(ink - np.roll(ink, 8, axis=1)).mean()


def test_augmented_images_vary_and_keep_the_ink():
    images, labels, _ = g.glyphs(identities=10, per_identity=6, image_size=32, seed=0)
    flat = images.reshape(len(images), -1).astype(float)
    within = np.abs(flat[0::6] - flat[1::6]).mean()
    assert within > 10                      # two images of one identity differ
    contrast = flat.max(axis=1) - flat.min(axis=1)
    assert np.all(contrast > 40)            # none is blank (thin ink is fainter)


def test_ten_thousand_images_render_in_seconds():
    g.identities("train")                   # the one-off identity table, cached
    start = time.perf_counter()
    images, _, _ = g.glyphs(identities=1000, per_identity=10, image_size=32)
    assert images.shape == (10_000, 32, 32, 3)
    assert time.perf_counter() - start < 60  # 1.8-2.2 s at load 2, 11 s at load 12


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="between 1 and"):
        g.glyphs(identities=10**6)
    other = g.identities("test")[0]
    with pytest.raises(ValueError, match="the other split"):
        g.glyphs(identities=[other], split="train")
    with pytest.raises(ValueError, match="split must be"):
        g.glyphs(split="val")
    with pytest.raises(ValueError, match="per_identity"):
        g.glyphs(per_identity=0)


def test_identity_folders_load_through_the_folder_loader(tmp_path):
    for who, level in (("ann", 10), ("bob", 200)):
        (tmp_path / who).mkdir()
        for i in range(2):
            Image.fromarray(np.full((20, 30, 3), level + i, "uint8")).save(
                tmp_path / who / f"{i}.png")
    (tmp_path / "bob" / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        images, labels, names = g.identity_folders(tmp_path, image_size=8)
    assert names == ("ann", "bob") and images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(images[:, 4, 4, 0], [10, 11, 200, 201])
    with pytest.raises(FileNotFoundError):
        g.identity_folders(tmp_path / "missing")
