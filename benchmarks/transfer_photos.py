"""Transfer learning with real ImageNet features on real photos, offline.

Two small tasks built from scikit-image's photos (kvision.data.photos):

- ``textures``: 5 classes (brick, grass, gravel, moon, hubble_deep_field), 64x64
  patches cut on a grid, resized to the input size; training patches from the left
  half of each photo, test patches (32 per class) from the right half: no overlap;
- ``faces``: faces vs non-faces of ``lfw_subset()`` (25x25 grey), 50 test images
  per class.

For 5, 10 and 20 training images per class and several seeds (a seeded random
subset of the training split each; the seed also draws the initial weights), three
learners, all on EfficientNet-Lite0:

- ``pretrained``: ``kvision.transfer.build_classifier("efficientnet_lite0",
  weights="imagenet")`` in its default regime: the backbone frozen and in inference
  mode, a new Dropout(0.2) + Dense head trained with Adam. A frozen backbone in
  inference mode is a fixed function of the image, so the head is trained on its
  pooled features computed once - the computation ``model.fit`` on the whole model
  does (the script prints the check: the model's own head on cached features gives
  the model's outputs); its time is the extraction of its training images plus the
  head's fit;
- ``scratch``: the same network and head with ``weights=None``, trained end to end
  (BatchNorm in training mode, as a network from scratch trains, momentum 0.9 so its
  moving statistics converge in so few steps), as many epochs or more
  (``--scratch-epochs``), Adam, same batch size;
- ``sklearn``: the same pooled features and scikit-learn's ``LogisticRegression``
  (what ``kvision.transfer.fit_sklearn_head`` does: extract, then ``fit``).

Prints a Markdown table: test accuracy (mean and min-max over seeds) and training
seconds (mean; compiled once, so tracing is not counted), all measured in this run,
then the pretrained - scratch gap per seed at 10 images per class.

    python benchmarks/transfer_photos.py [--seeds 3] [--size 64] [--epochs 30]
        [--scratch-epochs 30] [--datasets textures,faces]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kvision  # noqa: E402
from kvision import transfer  # noqa: E402
from kvision.data import photos  # noqa: E402

PER_CLASS = (5, 10, 20)
LEARNERS = ("pretrained", "scratch", "sklearn")
BN_MOMENTUM = 0.9  # of the scratch network (see scratch_model)


def load(name, size):
    """``(x_train, y_train), (x_test, y_test)`` of task ``name`` at ``size`` px."""
    if name == "textures":
        return photos.load_textures(patch_size=64, image_size=size)
    return photos.load_faces(image_size=size)


def scratch_model(classes, size, seed):
    """EfficientNet-Lite0 from random weights with the transfer head, end to end."""
    keras.utils.set_random_seed(seed)
    backbone = kvision.create("efficientnet_lite0", weights=None, include_top=False,
                              pooling="avg", input_shape=(size, size, 3))
    # 30 epochs of 25-100 images are 60-200 steps: with Keras' BatchNorm momentum 0.99
    # the moving statistics stay near their initial values and the trained network
    # predicts one class at inference (measured: chance on every seed). 0.9 lets them
    # converge within the run, as a network trained on little data needs.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    x = keras.layers.Dropout(0.2, name="head_dropout")(backbone.output)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(backbone.input, outputs, name="efficientnet_lite0_scratch")


def head_model(features, classes, seed):
    """build_classifier's default head (Dropout 0.2 + Dense softmax) on pooled features."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((features,)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(classes, activation="softmax")])


class Retrainer:
    """One compiled model trained again and again (traced once): each run starts from
    the initial weights of its seed, with a fresh Adam state."""

    def __init__(self, model):
        self.model = model
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      jit_compile=False)
        model.optimizer.build(model.trainable_variables)

    def fit(self, weights, x, y, epochs, seed):
        """Seconds of ``model.fit`` (Adam 1e-3, batch 16) from ``weights``."""
        self.model.set_weights(weights)
        for variable in self.model.optimizer.variables:
            if "learning_rate" not in variable.path:
                variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        self.model.fit(x, y, batch_size=16, epochs=epochs, shuffle=True, verbose=0)
        return time.perf_counter() - start

    def accuracy(self, x, y):
        return float(np.mean(self.model.predict(x, batch_size=64, verbose=0).argmax(-1) == y))


def imagenet_features(classes, size, x_train, x_test):
    """Pooled features of the frozen ImageNet backbone of ``build_classifier``'s model,
    computed once, with the extraction time per image and a check that the model's
    own head on them gives the model's outputs."""
    model = transfer.build_classifier("efficientnet_lite0", classes, weights="imagenet",
                                      input_shape=(size, size, 3))
    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    pooled.predict(x_train[:8], verbose=0)  # trace
    start = time.perf_counter()
    f_train = pooled.predict(x_train, batch_size=64, verbose=0)
    per_image = (time.perf_counter() - start) / len(x_train)
    f_test = pooled.predict(x_test, batch_size=64, verbose=0)
    head = keras.Sequential([keras.Input(f_train.shape[1:]), model.get_layer("head_dropout"),
                             model.get_layer("predictions")])
    gap = np.abs(model.predict(x_test[:16], verbose=0)
                 - head.predict(f_test[:16], verbose=0)).max()
    print(f"  model(images) vs its head(cached features): max |diff| {gap:.1e}; "
          f"features {1000 * per_image:.1f} ms/image")
    return f_train, f_test, per_image


def run(name, size, seeds, epochs, scratch_epochs):
    """``{(learner, per_class): [(accuracy, seconds) per seed]}``.

    The frozen backbone runs in inference mode, so its features are a fixed function
    of the image: ``pretrained`` trains the same head layers on features computed
    once (what ``model.fit`` on the whole model computes, printed check), and its
    time is the extraction of its training images plus the head's fit.
    """
    from sklearn.linear_model import LogisticRegression

    (x_train, y_train), (x_test, y_test) = load(name, size)
    classes = int(y_train.max()) + 1
    print(f"{name}: {len(x_train)} training candidates, {len(x_test)} test images")
    f_train, f_test, per_image = imagenet_features(classes, size, x_train, x_test)
    scratch = Retrainer(scratch_model(classes, size, 0))
    inits = {seed: scratch_model(classes, size, seed).get_weights() for seed in seeds}
    scratch.fit(inits[seeds[0]], x_train[:16], y_train[:16], 1, 0)  # trace once
    results = {}
    progress = keras.utils.Progbar(len(PER_CLASS) * len(seeds), unit_name="run")
    for n in PER_CLASS:
        for seed in seeds:
            x, y = photos.per_class(x_train, y_train, n, seed=seed)
            f, _ = photos.per_class(f_train, y_train, n, seed=seed)  # the same images
            extraction = per_image * len(x)
            head = Retrainer(head_model(f.shape[1], classes, seed))
            seconds = head.fit(head.model.get_weights(), f, y, epochs, seed)
            results.setdefault(("pretrained", n), []).append(
                (head.accuracy(f_test, y_test), extraction + seconds))
            seconds = scratch.fit(inits[seed], x, y, scratch_epochs, seed)
            results.setdefault(("scratch", n), []).append(
                (scratch.accuracy(x_test, y_test), seconds))
            start = time.perf_counter()
            logistic = LogisticRegression(max_iter=5000).fit(f, y)
            seconds = time.perf_counter() - start
            results.setdefault(("sklearn", n), []).append(
                (float(logistic.score(f_test, y_test)), extraction + seconds))
            progress.add(1)
    return results, len(x_test), classes


def table(name, results, num_test, classes, seeds):
    lines = [f"\n{name}: {classes} classes, {num_test} test images, seeds {list(seeds)}",
             "",
             "| learner | " + " | ".join(f"{n}/class: accuracy (min-max), s"
                                        for n in PER_CLASS) + " |",
             "|---|" + "---|" * len(PER_CLASS)]
    for learner in LEARNERS:
        cells = []
        for n in PER_CLASS:
            acc = np.array([a for a, _ in results[(learner, n)]])
            secs = np.array([s for _, s in results[(learner, n)]])
            cells.append(f"{acc.mean():.1%} ({acc.min():.0%}-{acc.max():.0%}), "
                         f"{secs.mean():.1f} s")
        lines.append(f"| {learner} | " + " | ".join(cells) + " |")
    gaps = [p - s for (p, _), (s, _) in zip(results[("pretrained", 10)],
                                            results[("scratch", 10)])]
    lines.append(f"\npretrained - scratch at 10/class: "
                 f"{', '.join(f'{g * 100:+.1f}' for g in gaps)} points "
                 f"(min {min(gaps) * 100:+.1f})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of the pretrained model's head")
    parser.add_argument("--scratch-epochs", type=int, default=30)
    parser.add_argument("--datasets", default="textures,faces")
    args = parser.parse_args(argv)
    seeds = range(args.seeds)
    print(f"EfficientNet-Lite0 at {args.size}x{args.size}; head {args.epochs} epochs, "
          f"scratch {args.scratch_epochs} epochs; Adam 1e-3, batch 16")
    for name in args.datasets.split(","):
        results, num_test, classes = run(name, args.size, seeds, args.epochs,
                                         args.scratch_epochs)
        print(table(name, results, num_test, classes, seeds), flush=True)


if __name__ == "__main__":
    main()
