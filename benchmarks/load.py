"""Load (issue 21): ``kvision predict`` over a folder of 1,000 and 10,000 small images,
and ``TFLiteModel.predict`` on 1,000 and 10,000 images: peak memory and throughput.

Each measurement is its own process, so its peak RSS (``ru_maxrss`` from ``wait4``,
or ``getrusage`` in the child) is its own; this script never imports TensorFlow itself
(the model and images are made by a child too): Linux carries a parent's resident size
at ``fork`` into the child's ``ru_maxrss``. Memory is bounded when the 10,000-image
run peaks within 1.2x of the 1,000-image one. Throughput is images per second of
wall time and per second of CPU time (user + system of the process: the machine's
2 cores are shared, so the CPU figure is the steadier one); for ``kvision predict``
the start-up (TensorFlow, the model) is taken out by the difference of the two runs.

The model is LeNet-5 (32x32x1, 10 classes, random weights: speed and memory do not
depend on training); the images are the embedded digits, PNG, 32x32 grayscale,
repeated with a seeded random shift to fill 10,000 files.

    python benchmarks/load.py [--counts 1000,10000] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

TFLITE_CHILD = """
import resource, sys, time
import numpy as np
from kvision.export import TFLiteModel
model = TFLiteModel(sys.argv[1])
n = int(sys.argv[2])
x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)
x = x.astype("float32")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
wall, cpu = time.perf_counter(), time.process_time()
y = model.predict(x)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
assert len(y) == n
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, wall, cpu)
"""


def make_world(work, most):
    """The model (``.keras`` and ``.tflite``) and folders of images, one per count."""
    import numpy as np
    from PIL import Image

    from kvision import registry
    from kvision.data import load_digits
    from kvision.export import tflite
    from kvision.saving import save_model

    model = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    keras_path = save_model(model, os.path.join(work, "lenet5.keras"),
                            class_names=[str(i) for i in range(10)])
    tflite_path = tflite(model, os.path.join(work, "lenet5.tflite")).path
    (x, _), _ = load_digits(image_size=32)
    rng = np.random.default_rng(0)
    folder = os.path.join(work, f"images-{most}")
    os.makedirs(folder, exist_ok=True)
    for i in range(most):
        pixels = np.roll(x[i % len(x), :, :, 0], rng.integers(-3, 4, 2), axis=(0, 1))
        Image.fromarray(pixels.astype("uint8")).save(os.path.join(folder, f"{i:05d}.png"))
    return keras_path, tflite_path, folder


def subset(folder, count, work):
    """A folder of the first ``count`` images (links to them)."""
    target = os.path.join(work, f"images-{count}")
    if not os.path.isdir(target):
        os.makedirs(target)
        for name in sorted(os.listdir(folder))[:count]:
            os.symlink(os.path.join(folder, name), os.path.join(target, name))
    return target


def predict_run(keras_path, folder):
    """``(peak RSS MiB, wall s, CPU s, lines answered)`` of one ``kvision predict``."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "kvision.cli", "predict",
                                    keras_path, folder, "--top-k", "1"],
                                   stdout=out, stderr=subprocess.DEVNULL, env=ENV)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = len(out.read().splitlines())
    assert process.returncode == 0, process.returncode
    return usage.ru_maxrss / 1024, wall, usage.ru_utime + usage.ru_stime, lines


def tflite_run(tflite_path, count):
    done = subprocess.run([sys.executable, "-c", TFLITE_CHILD, tflite_path, str(count)],
                          capture_output=True, text=True, env=ENV, check=True)
    before, rss, wall, cpu = done.stdout.split()[-4:]
    return int(rss) / 1024, float(wall), float(cpu), int(before) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--work", default=None)
    parser.add_argument("--make-world", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tflite-only", action="store_true",
                        help="only TFLiteModel.predict (the kvision predict rows are void)")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    work = args.work or tempfile.mkdtemp(prefix="kvision-load-")
    if args.make_world:  # the child that imports TensorFlow
        print("\n".join(make_world(work, counts[-1])))
        return 0
    made = subprocess.run([sys.executable, __file__, "--make-world", "--work", work,
                           "--counts", args.counts], capture_output=True, text=True,
                          env=ENV, check=True)
    keras_path, tflite_path, folder = made.stdout.split("\n")[-4:-1]
    rows, predict, lite = [], {}, {}
    for count in counts:
        if not args.tflite_only:
            predict[count] = predict_run(keras_path, subset(folder, count, work))
        lite[count] = tflite_run(tflite_path, count)
    if args.tflite_only:
        predict = {c: (1.0, float(c), float(c), c) for c in counts}  # void rows
    for count in counts:
        rss, wall, cpu, lines = predict[count]
        assert lines == count, (lines, count)
        rows.append(f"| kvision predict, folder of {count:,} PNGs | {rss:.0f} | {wall:.1f} | "
                    f"{cpu:.1f} | {count / wall:.0f} | {count / cpu:.0f} |")
    for count in counts:
        rss, wall, cpu, before = lite[count]
        rows.append(f"| TFLiteModel.predict, {count:,} images ({count * 4096 / 2**20:.0f} "
                    f"MiB of float32 input, held before the call: peak {before:.0f} MiB) | "
                    f"{rss:.0f} | {wall:.2f} | {cpu:.2f} | {count / wall:.0f} | "
                    f"{count / cpu:.0f} |")
    low, high = counts[0], counts[-1]
    steady = [(high - low) / (predict[high][i] - predict[low][i]) for i in (1, 2)]
    print(f"LeNet-5 32x32x1; {os.cpu_count()} cores; work folder {work}\n")
    print("| run | peak RSS MiB | wall s | CPU s | images/s wall | images/s CPU |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    added = {c: lite[c][0] - lite[c][3] for c in counts}
    print(f"\npeak RSS {high:,} / {low:,} images: kvision predict "
          f"{predict[high][0] / predict[low][0]:.3f}x, TFLiteModel.predict "
          f"{lite[high][0] / lite[low][0]:.3f}x with its input array, "
          f"{(lite[high][0] - high * 4096 / 2**20) / (lite[low][0] - low * 4096 / 2**20):.3f}x "
          f"without it; the call itself added {added[low]:.1f} and {added[high]:.1f} MiB "
          f"to the peak (bounded: <= 1.2x)")
    print(f"kvision predict without its start-up ({high:,} - {low:,} images): "
          f"{steady[0]:.0f} images/s wall, {steady[1]:.0f} images/s CPU")
    bounded = predict[high][0] <= 1.2 * predict[low][0] and \
        lite[high][0] - high * 4096 / 2**20 <= 1.2 * (lite[low][0] - low * 4096 / 2**20)
    return 0 if bounded else 1


if __name__ == "__main__":
    sys.exit(main())
