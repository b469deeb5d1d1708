"""AtrousConv2D vs keras.layers.Conv2D: DeepLab v3+ training steps on small inputs.

The segmentation benchmark's DeepLab v3+ (MobileNetV2 alpha 0.35, output stride 8,
64x64 input, ASPP width 64) is built twice with the same weights: as kvision builds it
(ASPP branches are :class:`kvision.layers.AtrousConv2D`, which leave out the taps that
lie wholly in the padding: rates 12/24/36 on the 8x8 map keep only each kernel's
centre) and with those layers turned back into plain ``Conv2D``. Both run the same
batches of ``train_on_batch`` in turns in this one process (SGD with learning rate 0,
so the weights stay equal); prints the outputs' largest difference and the step-time
ratio Conv2D / AtrousConv2D (> 1: kvision is faster).

    python benchmarks/atrous_speed.py [--size 64] [--output-stride 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kvision  # noqa: E402
from kvision.layers import AtrousConv2D  # noqa: E402


def plain_twin(model):
    """``model`` with every AtrousConv2D rebuilt as a keras Conv2D, same weights."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "AtrousConv2D":
            layer.update(class_name="Conv2D", module="keras.layers", registered_name=None)
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def step_seconds(model, x, y):
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    ours = kvision.create("deeplabv3_plus", classes=11, input_shape=(args.size, args.size, 3),
                          backbone="mobilenet_v2", backbone_kwargs={"alpha": 0.35},
                          filters=64, low_level_filters=16, output_stride=args.output_stride)
    plain = plain_twin(ours)
    trimmed = [layer.name for layer in ours.layers if isinstance(layer, AtrousConv2D)]
    assert not any(isinstance(layer, AtrousConv2D) for layer in plain.layers)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 11, (args.batch, args.size, args.size))
    difference = float(np.max(np.abs(np.asarray(ours(x)) - np.asarray(plain(x)))))
    for model in (ours, plain):
        model.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss="sparse_categorical_crossentropy", jit_compile=False)
        model.train_on_batch(x, y)  # trace
    times = {"AtrousConv2D": [], "Conv2D": []}
    for _ in range(args.rounds):
        times["AtrousConv2D"].append(step_seconds(ours, x, y))
        times["Conv2D"].append(step_seconds(plain, x, y))
    ours_s, plain_s = (statistics.median(times[k]) for k in ("AtrousConv2D", "Conv2D"))
    print(f"DeepLab v3+ at {args.size}x{args.size}, output stride {args.output_stride}, "
          f"batch {args.batch}; dilated layers {trimmed}")
    print(f"largest output difference: {difference:.2e}")
    print("| layers | train step s (median of {}) |\n|---|---|".format(args.rounds))
    print(f"| AtrousConv2D (kvision) | {ours_s:.3f} |\n| Conv2D | {plain_s:.3f} |")
    print(f"ratio Conv2D / AtrousConv2D: {plain_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
