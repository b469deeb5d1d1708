"""Metric learning on glyph identities never seen in training: which loss learns the
best embedding for the same network and the same CPU budget?

Every loss of ``kvision train embedding_net --model-arg loss=...``
(:data:`kvision.tasks.embedding.LOSSES`) trains the same network (``embedding_net``,
its small VGG-style body, 128-D unit vectors) from the same seed on the same
training glyphs (``--identities`` train-split identities x ``--per-identity``
images, P x K batches of 8 x 4), with Adam whose learning rate warms up over the
first tenth of the budget and then follows a half cosine to 0, both measured in CPU
seconds of this process (``time.process_time()``: every thread) from the end of the
first step (graph tracing: it runs at rate 0, counted in the budget, not in the
schedule; :class:`CPUBudget`), and stops when the budget is spent: the command
line's recipe (``kvision train embedding_net``: the same P x K batches, head, Adam
3e-3, warm-up over a tenth of the steps, cosine) with its clock in CPU seconds. Each is then measured on test-split
identities (``--test-identities`` x ``--test-per-identity`` images; train and test
never share an identity):

- rank-1 and MAP@R, leave-one-out over the test images
  (:func:`kvision.metrics.embedding.identification`);
- TAR at FAR 1e-3 over every pair of test images
  (:func:`kvision.metrics.embedding.verification`, cosine similarity);
- open-set DIR at FAR 0.01 and 0.1 (:func:`kvision.metrics.embedding.open_set`):
  the first half of the test identities enrolled with half of their images, probed
  with their other half (mated) and with the same number of images of the other
  test identities (non-mated).

Raw pixels (each image's grey levels minus their mean, cosine) are the baseline row.
Prints a Markdown table, all rows measured in this one run; then the best row's
embedding (``--export all``: every row's) exported to TFLite float32 and int8 by
kvision's export (:func:`kvision.export.tflite`; int8 calibrated on 200 training
glyphs) and its rank-1 on the same test images, with the change against Keras.

    python benchmarks/metric_learning.py [--cpu-seconds 60] [--losses cosface,arcface]
        [--export best|all|none]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kvision import registry  # noqa: E402
from kvision.data.glyphs import glyphs  # noqa: E402
from kvision.metrics.embedding import identification, open_set, verification  # noqa: E402
from kvision.tasks import embedding as task_lib  # noqa: E402

FARS = (0.01, 0.1)
DEFAULT_LOSSES = ("softmax", "contrastive", "triplet_batch_hard", "triplet_semi_hard",
                  "triplet_batch_all", "cosface", "arcface")


class CPUBudget(keras.callbacks.Callback):
    """Sets the learning rate from the CPU seconds spent (a linear warm-up over the
    first ``warmup`` of ``seconds``, then a half cosine to 0) and stops at
    ``seconds``; counts steps.

    The schedule's clock starts when the first step ends, and that step runs at rate
    0: it traces the training graph, several CPU seconds that, counted in the
    schedule, used up the warm-up, leaving it one step long. Without warm-up CosFace
    and ArcFace stayed near chance (issue 19: 450 steps, loss 9.7 and rank-1 0.015
    against 8.6 and 0.215 with a 45-step warm-up). The budget still counts it."""

    def __init__(self, base, seconds, warmup=0.1):
        super().__init__()
        self.base, self.seconds, self.warmup = base, seconds, warmup
        self.start, self.steps = time.process_time(), 0
        self.clock = None        # CPU time when the first (tracing) step ended
        self.warmup_steps = 0    # steps taken while warming up, the first included

    def spent(self):
        return time.process_time() - self.start

    def fraction(self):
        """How far along the schedule is: 0 until the first step has ended."""
        if self.clock is None:
            return 0.0
        left = self.seconds - (self.clock - self.start)
        return min((time.process_time() - self.clock) / max(left, 1e-9), 1.0)

    def on_train_batch_begin(self, batch, logs=None):
        fraction = self.fraction()
        if fraction < self.warmup:
            rate = self.base * fraction / self.warmup
            self.warmup_steps += 1
        else:
            rate = self.base * 0.5 * (1 + np.cos(np.pi * (fraction - self.warmup)
                                                 / (1 - self.warmup)))
        self.model.optimizer.learning_rate.assign(rate)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.clock is None:
            self.clock = time.process_time()
        if self.spent() >= self.seconds:
            self.model.stop_training = True


def train(loss, images, labels, classes, cpu_seconds, learning_rate, seed):
    """``embedding_net`` trained with ``loss`` for ``cpu_seconds``: (embedding model,
    the :class:`CPUBudget` (steps, warm-up steps, CPU seconds), last loss)."""
    keras.utils.set_random_seed(seed)
    model = registry.create("embedding_net", loss=loss)
    trainer = task_lib.training_model(model, loss, classes)
    trainer.compile(keras.optimizers.Adam(learning_rate),
                    task_lib.loss_function(loss))
    task = task_lib.TASK
    names = [str(i) for i in range(classes)]
    unused = task_lib.Labelled(images[:0], labels[:0], (), "not measured here")
    data = task._bundle(images, labels, names, unused, "glyphs")
    batches = task.fit_dataset("embedding_net", trainer, data, batch_size=32, seed=seed)
    budget = CPUBudget(learning_rate, cpu_seconds)
    history = trainer.fit(batches.repeat(), steps_per_epoch=100, epochs=10 ** 6,
                          verbose=0, callbacks=[budget])
    return model, budget, history.history["loss"][-1]


def exported_rank1(model, calibration, test, test_labels, folder):
    """``model`` exported to TFLite float32 and int8 (int8 calibrated on
    ``calibration``) by kvision's export (:func:`kvision.export.tflite`, the embedding
    checks of :mod:`kvision.export.embedding`), each run on the test images: {format:
    (rank-1, change in points against Keras, lowest cosine to Keras)}. Leave-one-out
    rank-1 over the same test images as the row's; no drop is refused here."""
    from kvision.export import tflite
    from kvision.export.parity import ParityError

    found = {}
    for quantize in (None, "int8"):
        path = os.path.join(folder, f"{model.name}.{quantize or 'float32'}.tflite")
        try:
            p = tflite(model, path, quantize, calibration, check_data=test,
                       check_labels=test_labels, max_rank1_drop=100.0).parity
        except ParityError as error:  # float32 below cosine 0.9999: report, not stop
            p = error.figures
        found[quantize or "float32"] = (p["rank1_candidate"], 0.0 - p["rank1_drop"],
                                        p["min_cosine"])
    return found


def measure(embeddings, labels):
    """The row's figures of ``embeddings`` (float64 (N, D)) of test ``labels``."""
    found = identification(embeddings, labels, embeddings, labels)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    first, second = np.triu_indices(len(unit), k=1)
    pairs = verification((unit @ unit.T)[first, second], labels[first] == labels[second],
                         fars=(1e-3,))
    return {"rank1": found["rank1"], "map_at_r": found["map_at_r"],
            "tar": pairs["tar_at_far"][1e-3], **open_set_figures(unit, labels)}


def open_set_figures(unit, labels):
    """DIR at FARS: the first half of the identities enrolled with the first half of
    their images, the rest of their images and as many of the others' as probes."""
    identities = np.unique(labels)
    enrolled = identities[:len(identities) // 2]
    position = np.zeros(len(labels), int)
    for identity in identities:
        rows = np.flatnonzero(labels == identity)
        position[rows] = np.arange(len(rows))
    per = np.bincount(labels).max()
    in_gallery = np.isin(labels, enrolled) & (position < per // 2)
    probes = ~in_gallery & (np.isin(labels, enrolled) | (position < per - per // 2))
    found = open_set(unit[probes], labels[probes], unit[in_gallery], labels[in_gallery],
                     fars=FARS)
    return {f"dir_{f:g}": found["dir_at_far"][f] for f in FARS}


def raw_pixels(images):
    grey = images.astype("float64").mean(-1).reshape(len(images), -1)
    return grey - grey.mean(1, keepdims=True)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx2") if f" {f}" in text]
    return f"{name} ({os.cpu_count()} cores; {', '.join(flags)})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--losses", default=",".join(DEFAULT_LOSSES))
    parser.add_argument("--identities", type=int, default=task_lib.GLYPH_IDENTITIES)
    parser.add_argument("--per-identity", type=int, default=task_lib.GLYPHS_PER_IDENTITY)
    parser.add_argument("--test-identities", type=int, default=200)
    parser.add_argument("--test-per-identity", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", choices=("best", "all", "none"), default="best",
                        help="which trained rows to export to TFLite float32 and int8 "
                             "(best: the highest rank-1)")
    args = parser.parse_args()
    losses = args.losses.split(",")
    for loss in losses:
        if loss not in task_lib.LOSSES:
            parser.error(f"unknown loss {loss!r}; expected some of {', '.join(task_lib.LOSSES)}")
    images, labels, _ = glyphs(args.identities, args.per_identity, image_size=32,
                               split="train", seed=args.seed + 1)
    test, test_labels, _ = glyphs(args.test_identities, args.test_per_identity,
                                  image_size=32, split="test", seed=args.seed)
    images, test = images.astype("float32"), test.astype("float32")
    print(f"CPU: {cpu_name()}; budget {args.cpu_seconds:g} CPU s per loss (process "
          f"time, all threads); train {args.identities} identities x "
          f"{args.per_identity}, test {args.test_identities} other identities x "
          f"{args.test_per_identity}", flush=True)
    rows = [("raw pixels", "-", "-", "-", "-", measure(raw_pixels(test), test_labels))]
    models = {}
    for loss in losses:
        model, budget, last = train(loss, images, labels, args.identities,
                                    args.cpu_seconds, args.learning_rate, args.seed)
        e = np.asarray(model.predict(test, batch_size=256, verbose=0), "float64")
        rows.append((loss, budget.steps, budget.warmup_steps, f"{budget.spent():.0f}",
                     f"{last:.3f}", measure(e, test_labels)))
        models[loss] = model
        print(f"{loss}: {budget.steps} steps, rank-1 {rows[-1][-1]['rank1']:.3f}",
              flush=True)
    print()
    print("| trained with | steps | warm-up steps | CPU s | last loss | rank-1 | MAP@R | "
          "TAR@FAR=1e-3 | " + " | ".join(f"DIR@FAR={f:g}" for f in FARS) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(FARS))
    for name, steps, warm, spent, last, f in rows:
        print(f"| {name} | {steps} | {warm} | {spent} | {last} | {f['rank1']:.3f} | "
              f"{f['map_at_r']:.3f} | {f['tar']:.3f} | "
              + " | ".join(f"{f[f'dir_{g:g}']:.3f}" for g in FARS) + " |")
    if args.export == "none" or not models:
        return
    trained = [row for row in rows if row[0] in models]
    chosen = trained if args.export == "all" else \
        [max(trained, key=lambda row: row[-1]["rank1"])]
    # int8 calibrates on training glyphs, as kvision export --data glyphs does
    pick = np.random.default_rng(args.seed).permutation(len(images))[:200]
    print()
    print("| trained with | Keras rank-1 | TFLite float32 rank-1 (change) | lowest "
          "cosine to Keras | TFLite int8 rank-1 (change) | lowest cosine to Keras |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name, *_, f in chosen:
            found = exported_rank1(models[name], images[pick], test, test_labels, folder)
            cells = [f"{found[k][0]:.3f} ({found[k][1]:+.2f} points) | "
                     f"{found[k][2]:.6f}" for k in ("float32", "int8")]
            print(f"| {name} | {f['rank1']:.3f} | " + " | ".join(cells) + " |",
                  flush=True)

if __name__ == "__main__":
    main()
