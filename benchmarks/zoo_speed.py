"""kvision vs keras.applications: forward-pass throughput of the shared families.

For VGG16, ResNet50, MobileNetV2, DenseNet121 and Xception at their default sizes,
both versions run a compiled (``tf.function``) forward pass of batch 8 in this one
process, alternately, so machine load affects both alike. Prints the throughput
ratio kvision/keras.applications (target >= 0.95) and each model's achieved
GFLOP/s (2 x MACs per second) as a fraction of a float32 matmul peak measured in the
same run.

    python benchmarks/zoo_speed.py [--batch 8] [--rounds 5] [--models vgg16,resnet50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kvision  # noqa: E402

PAIRS = {
    "vgg16": keras.applications.VGG16,
    "resnet50": keras.applications.ResNet50,
    "mobilenet_v2": keras.applications.MobileNetV2,
    "densenet121": keras.applications.DenseNet121,
    "xception": keras.applications.Xception,
}


def matmul_peak(n=2048, repeats=10):
    """Float32 GFLOP/s of an n x n matmul, best of ``repeats``."""
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    f = tf.function(lambda: tf.matmul(a, b))
    f().numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f().numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def timed(fn, x):
    start = time.perf_counter()
    fn(x).numpy()
    return time.perf_counter() - start


def compare(name, batch, rounds):
    info = kvision.models.get_info(name)
    size = info.default_size
    ours = kvision.create(name)
    ref = PAIRS[name](weights=None)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)),
                    tf.float32)
    fns = {k: tf.function(lambda t, m=m: m(t, training=False))
           for k, m in (("kvision", ours), ("keras", ref))}
    for fn in fns.values():  # trace and warm up
        timed(fn, x)
        timed(fn, x)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn, x))
    median = {k: statistics.median(v) for k, v in times.items()}
    macs = kvision.profile(ours).macs
    keras.backend.clear_session()
    return {
        "name": name, "size": size,
        "kvision_img_s": batch / median["kvision"], "keras_img_s": batch / median["keras"],
        "ratio": median["keras"] / median["kvision"],
        "gflop_s": 2 * macs * batch / median["kvision"] / 1e9,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default=",".join(PAIRS))
    args = parser.parse_args()
    peak = matmul_peak()
    print(f"float32 matmul peak (2048^2): {peak:.1f} GFLOP/s; batch {args.batch}, "
          f"median of {args.rounds} alternating rounds")
    print(f"{'model':<14}{'input':>6}{'kvision img/s':>15}{'keras img/s':>13}"
          f"{'ratio':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for name in args.models.split(","):
        r = compare(name, args.batch, args.rounds)
        print(f"{r['name']:<14}{r['size']:>6}{r['kvision_img_s']:>15.1f}{r['keras_img_s']:>13.1f}"
              f"{r['ratio']:>8.3f}{r['gflop_s']:>9.1f}{r['gflop_s'] / peak:>9.0%}")


if __name__ == "__main__":
    main()
