"""``kvision predict``: a classifier's top-k labels, a detector's boxes or a segmenter's
masks for image files, drawn with ``--out``."""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(subparsers):
    """Add the ``predict`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("predict", help="top-k labels of image files, a detector's "
                                              "boxes or a segmenter's masks (drawn with --out)")
    p.add_argument("model", help=".keras file, run directory, run name under "
                                 "saved_models/, NAME:imagenet (a registry network "
                                 "with ImageNet weights; plain NAME when no run has "
                                 "that name), a .tflite file, or a SavedModel version "
                                 "directory (a directory of numbered versions: the "
                                 "newest)")
    p.add_argument("images", nargs="+", metavar="image",
                   help="image files, or folders standing for their images (any depth)")
    p.add_argument("--top-k", type=_at_least_one, default=5,
                   help="classifiers: the K best classes (all of them when fewer)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None,
                   help="detectors: a PNG with the boxes and labels drawn (one image), "
                        "or a directory of them; segmenters: the coloured mask overlay "
                        "(each instance in its own colour for instance models)")
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="detectors and instance models: leave out detections scoring "
                        "below this")
    p.set_defaults(func=run)
    return p


def _at_least_one(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def run(args) -> int:
    """Answer every image with the model's kind of answer; 1 when some could not be
    read (the others are answered), else 0."""
    from kvision.predict import expand_images, load_trained

    trained = load_trained(args.model)
    # Which model answers, where a name could mean a run or a pretrained network.
    print(f"kvision predict: model {trained.describe()}", file=sys.stderr)
    files, problems = expand_images(args.images)
    if trained.task == "classification":
        results, line = _predict_classes(trained, files, args), _classes_line
    else:  # the model's task answers: detectors, segmenters, a task of one's own
        from kvision.tasks.base import get_task

        task = get_task(trained.task)
        results, line = task.predict_files(trained, files, args), task.answer_line
    results += [{"path": path, "error": why} for path, why in problems.items()]
    return _print_answers(results, args.json, line)


def _print_answers(results, as_json, line):
    """Each answer on stdout (``line(result)``, or JSON), each file that could not be
    read as one line on stderr; 1 when some could not (the others are answered)."""
    failed = [r for r in results if "error" in r]
    if as_json:
        arrays = ("label_map", "masks")  # a segmenter's maps: drawn with --out instead
        print(json.dumps([{k: v for k, v in r.items() if k not in arrays}
                          for r in results], indent=1))
    for result in results:
        if "error" in result:
            print(f"kvision predict: {result['error']}", file=sys.stderr)
        elif not as_json:
            drawn = f" -> {result['drawn']}" if "drawn" in result else ""
            print(f"{result['path']}: {line(result)}{drawn}")
    if failed:
        print(f"kvision predict: {len(failed)} of {len(results)} inputs could not be "
              f"read", file=sys.stderr)
    return 1 if failed else 0


def _predict_classes(trained, files, args):
    from kvision.predict import predict_images

    if args.out is not None:
        raise ValueError(f"--out draws detections, but {trained.path} is a classifier "
                         f"(a detector answers boxes, scores, classes, num_detections).")
    return predict_images(trained, files, k=args.top_k, on_error="report")


def _classes_line(result):
    return ", ".join(f"{p['label']} {p['probability']:.3f}"
                     for p in result["predictions"])


def _drawing_paths(images, out):
    """Where each drawn image goes: ``out`` itself for one image (a ``.png`` file),
    ``out/<name>.png`` for several (``<name>-1.png``… where two files share a name)."""
    if len(images) == 1 and out.lower().endswith(".png"):
        return [out]
    if os.path.isfile(out):
        raise ValueError(f"--out {out!r} is a file; with {len(images)} images it must "
                         f"be a directory (or a .png path for one image).")
    targets, seen = [], {}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, -1) + 1
        targets.append(os.path.join(out, f"{stem}-{seen[stem]}.png" if seen[stem]
                                    else f"{stem}.png"))
    return targets


def _draw_answered(results, files, out, draw):
    """``draw(result, target)`` for each answered file, into its ``--out`` place."""
    if out is None:
        return
    targets = dict(zip(files, _drawing_paths(files, out)))
    for result in results:
        if "error" not in result:
            result["drawn"] = draw(result, targets[result["path"]])


def _predict_detections(trained, files, args):
    from kvision.predict import detect_images, draw_detections

    if args.out is not None:
        _drawing_paths(files, args.out)  # a bad --out fails before the model runs
    results = detect_images(trained, files, score_threshold=args.score_threshold,
                            on_error="report")
    _draw_answered(results, files, args.out,
                   lambda result, target: draw_detections(result["path"], result, target))
    return results


def _boxes(found):
    return ", ".join(f"{d['label']} {d['score']:.3f} "
                     f"[{', '.join(f'{v:.1f}' for v in d['box'])}]" for d in found)


def _detections_line(result):
    found = _boxes(result["detections"])
    return f"{len(result['detections'])} detections{': ' + found if found else ''}"


def _predict_segmentation(trained, files, args):
    from kvision.predict import draw_segmentation, segment_images

    if args.out is not None:
        _drawing_paths(files, args.out)  # a bad --out fails before the model runs
    results = segment_images(trained, files, score_threshold=args.score_threshold,
                             on_error="report")
    _draw_answered(results, files, args.out, lambda result, target: draw_segmentation(
        result["path"], result, target, class_names=trained.class_names))
    return results


def _segmentation_line(result):
    if "instances" in result:
        found = _boxes(result["instances"])
        return f"{len(result['instances'])} instances{': ' + found if found else ''}"
    return ", ".join(f"{c['label']} {c['fraction']:.1%}" for c in result["classes"])
