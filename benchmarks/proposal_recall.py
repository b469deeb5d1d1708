"""Proposal recall: the fraction of ground-truth objects that some proposal covers at
IoU 0.5 and 0.7, against the number of proposals kept per image (the first N of each
method's ranking), on held-out digit scenes (``digit_scenes(subset="test")``).

Selective search (``kvision.data.proposals``, OpenCV's, "fast" and "quality") is
measured here; any other method plugs in through :func:`recall_table`, a function
``image (H, W, 3) uint8 -> (n, 4) xyxy boxes, best first`` (the trained RPN's
proposals of Faster R-CNN, for instance). Prints a table and its seconds per image,
and draws recall against the number of proposals to a PNG.

    python benchmarks/proposal_recall.py [--images 200] [--size 96] [--clutter 2]
        [--rpn saved_models/faster_rcnn/faster_rcnn.keras] [--out saved_models/proposal_recall.png]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from kvision.data import proposals as proposal_lib
from kvision.data.synthetic import digit_scenes
from kvision.metrics.detection import box_iou

BUDGETS = (10, 50, 100, 300, 1000, 2000)
THRESHOLDS = (0.5, 0.7)


def best_overlaps(found, truth, budgets=BUDGETS):
    """``(len(budgets), G)``: each ground-truth box's best IoU with the first N
    proposals, for every budget N."""
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    found = np.asarray(found, np.float64).reshape(-1, 4)
    if not len(found):
        return np.zeros((len(budgets), len(truth)))
    ious = box_iou(found, truth)                       # (P, G)
    running = np.maximum.accumulate(ious, axis=0)      # best among the first p + 1
    rows = np.minimum(np.asarray(budgets), len(found)) - 1
    return running[rows]


def recall_table(methods, scenes, budgets=BUDGETS, thresholds=THRESHOLDS):
    """``{method: {"recall": (len(budgets), len(thresholds)), "seconds": per image,
    "proposals": mean count}}`` for ``methods`` ``{name: image -> boxes}``."""
    results = {}
    for name, propose in methods.items():
        best, counts, start = [], [], time.perf_counter()
        for image, truth in zip(scenes.images, scenes.boxes):
            found = propose(image)
            counts.append(len(found))
            best.append(best_overlaps(found, truth, budgets))
        seconds = (time.perf_counter() - start) / len(scenes)
        best = np.concatenate(best, axis=1)            # (budgets, all objects)
        recall = np.stack([(best >= t).mean(axis=1) for t in thresholds], axis=1)
        results[name] = {"recall": recall, "seconds": seconds,
                         "proposals": float(np.mean(counts))}
    return results


def selective_search(mode):
    """The selective-search method of ``mode`` for :func:`recall_table`."""
    return functools.partial(proposal_lib.selective_search, mode=mode, max_proposals=max(
        BUDGETS))


def rpn(path):
    """The trained RPN of a saved Faster R-CNN (its run folder's ``NAME.keras`` or a
    checkpoint) for :func:`recall_table`: the valid proposals after NMS, best first."""
    import keras

    from kvision.models.detection.rcnn import TwoStageDetector

    model = keras.saving.load_model(path, safe_mode=True)
    if not isinstance(model, TwoStageDetector):  # the detector: its nested network
        model = next(layer for layer in model.layers if isinstance(layer, TwoStageDetector))

    def propose(image):
        out = model.predict(np.asarray(image, "float32")[None], verbose=0)
        return out["proposals"][0][out["proposal_valid"][0]]

    return propose


def print_table(results, budgets=BUDGETS, thresholds=THRESHOLDS):
    """One row per budget, a column per method and IoU; then each method's cost."""
    columns = [(name, j) for name in results for j in range(len(thresholds))]
    print("| proposals | " + " | ".join(f"{name} R@{thresholds[j]}" for name, j in columns)
          + " |")
    print("|---" * (1 + len(columns)) + "|")
    for i, n in enumerate(budgets):
        print(f"| {n} | " + " | ".join(f"{results[name]['recall'][i, j]:.3f}"
                                       for name, j in columns) + " |")
    for name, r in results.items():
        print(f"{name}: {r['seconds']:.3f} s per image, {r['proposals']:.1f} proposals "
              f"per image on average")


def plot(results, path, budgets=BUDGETS, thresholds=THRESHOLDS):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(thresholds), figsize=(5 * len(thresholds), 4),
                                sharey=True)
    for ax, (j, t) in zip(np.atleast_1d(axes), enumerate(thresholds)):
        for name, r in results.items():
            ax.plot(budgets, r["recall"][:, j], marker="o", label=name)
        ax.set(xscale="log", xlabel="proposals per image", title=f"recall at IoU {t}",
               ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("recall")
    np.atleast_1d(axes)[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--clutter", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rpn", default=None, metavar="MODEL.keras",
                        help="also a trained Faster R-CNN's RPN (at the scenes' size)")
    parser.add_argument("--out", default="saved_models/proposal_recall.png")
    args = parser.parse_args(argv)
    scenes = digit_scenes(args.images, image_size=args.size, clutter=args.clutter,
                          subset="test", seed=args.seed)
    methods = {f"selective search ({mode})": selective_search(mode)
               for mode in proposal_lib.MODES}
    if args.rpn:
        methods["trained RPN"] = rpn(args.rpn)
    results = recall_table(methods, scenes)
    print(f"{args.images} held-out digit scenes, {args.size}x{args.size}, clutter "
          f"{args.clutter}, {sum(len(b) for b in scenes.boxes)} objects")
    print_table(results)
    plot(results, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
