"""How faithful each attribution method is, and whether occlusion and Grad-CAM agree,
on digit scenes.

A small CNN (a nested "backbone" of three 3x3 convolutions, global average pooling,
Dense 10 softmax; the classifier of ``tests/visualization/test_attribution.py``) is
trained on 3,000 scenes of 32x32 with one digit of 10-14 px each (6 epochs, Adam,
seed 0). On ``--scenes`` held-out scenes every method of
:mod:`kvision.visualization.attribution` explains the top class, and
:func:`~kvision.visualization.attribution.deletion_insertion` measures the deletion
AUC (pixels set to the image's mean from the most important down; lower is more
faithful) and the insertion AUC (higher is more faithful) of the class probability.
A seeded random map is the baseline a method must beat.

Localization: the share of scenes whose occlusion peak lies within 4 px of the
Grad-CAM peak, beside chance (the share of the image within 4 px of the Grad-CAM
peak: where a random peak would fall).

    python benchmarks/explain_faithfulness.py [--scenes 20] [--steps 16]
"""

import argparse
import time

import keras
import numpy as np

from kvision.data.synthetic import digit_scenes
from kvision.visualization import attribution as A

SIZE = 32
RADIUS = 4.0


def classifier():
    """The test suite's digit-scene classifier (a nested backbone under GAP)."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((SIZE, SIZE, 1))
    y = keras.layers.GlobalAveragePooling2D()(backbone(images))
    y = keras.layers.Dense(10, activation="softmax", name="predictions")(y)
    return keras.Model(images, y, name="digits")


def scenes(count, subset, seed):
    """``(images float32, labels)`` of one-digit scenes."""
    found = digit_scenes(count, image_size=SIZE, objects=1, digit_size=(10, 14),
                         channels=1, subset=subset, seed=seed)
    return found.images.astype("float32"), np.array([c[0] for c in found.classes])


def trained(seed=0, count=3000, epochs=6):
    keras.utils.set_random_seed(seed)
    x, y = scenes(count, "train", seed)
    model = classifier()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def methods(seed=0):
    """name -> f(model, images) -> maps, the random baseline last."""
    rng = np.random.default_rng(seed)
    return {
        "Grad-CAM": A.gradcam,
        "Grad-CAM++": A.gradcam_plus_plus,
        "saliency": A.saliency,
        "SmoothGrad (20)": lambda m, x: A.saliency(m, x, smoothgrad=20),
        "guided backprop": A.guided_backprop,
        "deconvnet": lambda m, x: A.deconvnet(m, x),
        "occlusion (4 px)": lambda m, x: A.occlusion(m, x, patch=4, stride=2),
        "random": lambda m, x: rng.random(x.shape[:3]).astype("float32"),
    }


def peak(maps):
    """``(N, 2)`` row, column of each map's largest value."""
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, maps.shape[1:]), axis=1)


def agreement(first, second, radius=RADIUS):
    """``(share of maps whose peaks are within radius, chance)``: chance is the mean
    share of pixels within ``radius`` of ``first``'s peak."""
    a, b = peak(first), peak(second)
    close = np.linalg.norm(a - b, axis=1) <= radius
    rows, cols = np.mgrid[:first.shape[1], :first.shape[2]]
    chance = [np.mean(np.hypot(rows - r, cols - c) <= radius) for r, c in a]
    return float(close.mean()), float(np.mean(chance))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    start = time.perf_counter()
    model = trained()
    x, y = scenes(args.scenes, "test", 1)
    accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    print(f"trained in {time.perf_counter() - start:.0f} s; held-out accuracy on "
          f"{len(x)} scenes {accuracy:.2f}")
    print(f"| method | deletion AUC (lower better) | insertion AUC (higher better) |")
    print("|---|---|---|")
    found = {}
    for name, method in methods().items():
        found[name] = np.asarray(method(model, x))
        auc = A.deletion_insertion(model, x, found[name], steps=args.steps)
        print(f"| {name} | {auc['deletion'].mean():.3f} | {auc['insertion'].mean():.3f} |")
    close, chance = agreement(found["Grad-CAM"], found["occlusion (4 px)"])
    default = A.occlusion(model, x)
    close_default, _ = agreement(found["Grad-CAM"], default)
    print(f"occlusion peak within {RADIUS:.0f} px of the Grad-CAM peak: {close:.2f} "
          f"(4 px patches), {close_default:.2f} (default patches) of {len(x)} scenes; "
          f"chance {chance:.3f}")
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
