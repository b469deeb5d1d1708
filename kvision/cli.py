"""The ``kvision`` command: ``list``, ``info``, ``train``, ``evaluate``, ``predict``,
``sort`` and ``export`` (thin over the library)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile


def _profile_cache_path():
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    import kvision

    return os.path.join(home, "kvision", f"profiles-{kvision.__version__}.json")


# What a cached profile holds; an entry missing one (an older cache) is profiled again.
_PROFILE_KEYS = ("params", "trainable", "gflops", "size_mb", "input_shape")


def _read_profiles(path):
    """The cached profiles, or none where the file is missing or unreadable."""
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_profiles(path, cache):
    """Write the cache atomically: a run killed mid-write leaves the old file."""
    from kvision._files import write_text_atomically

    write_text_atomically(path, json.dumps(cache, indent=1))


def _profile_network(name):
    """The cache entry of one network, built at its default size."""
    import keras

    from kvision.models import create, profile

    p = profile(create(name))
    keras.backend.clear_session()
    return {"params": p.total_params, "trainable": p.trainable_params,
            "gflops": p.gflops, "size_mb": p.size_mb,
            "input_shape": list(p.input_shape)}


def zoo_table(names=None, use_cache=True, progress=True):
    """One row per network: name, task, year, key idea, input, params, GFLOPs, MB.

    Profiling builds each network at its default size once; each result is cached
    as soon as it is computed, in the Keras home directory (``~/.keras/kvision``) per
    kvision version, so an interrupted ``kvision list`` keeps what it profiled.
    """
    from tqdm import tqdm

    from kvision.models import get_info, list_models

    names = names or list_models()
    path = _profile_cache_path()
    cache = _read_profiles(path) if use_cache else {}
    known = {n for n in names if isinstance(cache.get(n), dict)
             and all(k in cache[n] for k in _PROFILE_KEYS)}
    rows = []
    for name in tqdm(names, desc="profiling", disable=not progress or len(known) == len(names)):
        if name not in known:
            cache[name] = _profile_network(name)
            if use_cache:
                _write_profiles(path, cache)
        info = get_info(name)
        height, width = cache[name]["input_shape"][:2]
        row = {"name": name, "task": info.task, "year": info.year,
               "key_idea": info.key_idea,
               "input": str(height) if height == width else f"{height}x{width}",
               **cache[name]}
        # The count in the convention of the network's reference figure.
        row["counted"] = row["trainable" if info.params_convention == "trainable" else "params"]
        rows.append(row)
    return rows


def format_table(rows):
    """The zoo table as plain text, one network a line."""
    task = max([len("task")] + [len(r["task"]) for r in rows]) + 2
    header = (f"{'name':<22}{'task':<{task}}{'year':>4}  {'key idea':<40}{'input':>8}"
              f"{'params':>14}{'GFLOPs':>9}{'MB':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<22}{r['task']:<{task}}{r['year']:>4}  "
                     f"{r['key_idea'][:39]:<40}{r['input']:>8}"
                     f"{r['counted']:>14,}{r['gflops']:>9.2f}{r['size_mb']:>9.1f}")
    lines.append("params counted as each network's reference counts them (keras.applications: "
                 "all variables; torchvision/timm/papers: trainable only); GFLOPs = "
                 "multiply-accumulates of one image at the input size, as the papers count; "
                 "MB = float32 weights.")
    return "\n".join(lines)


def format_markdown(rows):
    """The zoo table as Markdown, with each count's reference."""
    from kvision.models import get_info

    lines = ["| name | task | year | key idea | input | params | GFLOPs | MB | = reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        info = get_info(r["name"])
        same = "yes" if r["counted"] == info.num_params else f"NO: {info.num_params:,}"
        lines.append(f"| `{r['name']}` | {r['task']} | {r['year']} | {r['key_idea']} | "
                     f"{r['input']} | {r['counted']:,} | {r['gflops']:.2f} | "
                     f"{r['size_mb']:.1f} | {same}, {info.params_source} |")
    return "\n".join(lines)


def cmd_list(args):
    from kvision.models import get_info, list_models

    # Grouped by task, classifiers first (the order of the README's table).
    names = sorted(list_models(task=args.task),
                   key=lambda n: (get_info(n).task != "classification", get_info(n).task, n))
    if args.names_only:
        print("\n".join(names))
        return 0
    rows = zoo_table(names, use_cache=not args.no_cache)
    print(format_markdown(rows) if args.markdown else format_table(rows))
    return 0


def cmd_info(args):
    from kvision.models import create, get_info, profile

    info = get_info(args.name)
    model = create(info.name)
    p = profile(model)
    print(f"{info.name}  ({info.builder.__name__}, family {info.family}, {info.year})")
    print(f"paper:        {info.paper}")
    print(f"key idea:     {info.key_idea}")
    print(f"input:        {'x'.join(str(d) for d in p.input_shape)} "
          f"(minimum {info.min_size})")  # SegNet's default is 352x480
    print(f"parameters:   {p.total_params:,} ({p.trainable_params:,} trainable); "
          f"reference {info.num_params:,} ({info.params_convention}, {info.params_source})")
    print(f"GFLOPs:       {p.gflops:.3f} (multiply-accumulates)")
    print(f"weights:      {p.size_mb:.1f} MB float32; ImageNet: "
          f"{'keras.applications.' + info.keras_application if info.keras_application else 'none'}")
    stages = ", ".join(f"{s}: {n}" for s, n in sorted(info.stage_outputs.items()))
    print(f"stages:       {stages or '-'}")
    if not args.no_summary:
        model.summary(line_length=110)
    return 0


def cmd_train(args):
    from kvision.train import train_classifier

    with _train_log_on_stdout():  # the split and the run folder, before training
        result = train_classifier(args.model, data=args.data, epochs=args.epochs,
                                  batch_size=args.batch_size, learning_rate=args.lr,
                                  image_size=args.image_size, out_dir=args.out,
                                  overwrite=args.overwrite,
                                  export=not args.no_export, seed=args.seed,
                                  augment=not args.no_augment,
                                  backbone_weights=args.backbone_weights,
                                  regime=args.regime, strategy=args.strategy,
                                  mixed_precision=args.mixed_precision,
                                  jit_compile=args.jit,
                                  steps_per_epoch=args.steps_per_epoch)
    if result.initial_epoch:
        print(f"resumed from epoch {result.initial_epoch} (of {args.epochs})")
    print(f"test top-1 accuracy: {result.test_accuracy:.4f} "
          f"(error {1 - result.test_accuracy:.4f}) after {result.seconds:.1f} s of training; "
          f"{result.trainable_params:,} trainable parameters, "
          f"{result.seconds_per_epoch:.2f} s per epoch")
    if result.keras_path:
        print(f"saved: {result.keras_path} (log, curves and checkpoints in {result.out_dir})")
    if result.export_path:
        print(f"exported for TensorFlow Serving: {result.export_path}")
    return 0


@contextlib.contextmanager
def _train_log_on_stdout():
    """What ``kvision.train`` logs (the split, the run folder chosen) on stdout."""
    logger = logging.getLogger("kvision.train")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def cmd_evaluate(args):
    import os

    from kvision.data import load
    from kvision.evaluate import evaluate
    from kvision.predict import load_trained

    trained = load_trained(args.model)
    data = load(args.data, image_size=trained.image_size[0], channels=trained.channels,
                seed=args.seed)
    if tuple(data.class_names) != tuple(trained.class_names):
        raise ValueError(f"The data's classes {list(data.class_names)} are not the model's "
                         f"{list(trained.class_names)}.")
    png = args.confusion or os.path.join(os.path.dirname(trained.path), "confusion_matrix.png")
    report = evaluate(trained, data.test, confusion_png=png)
    if args.json:
        print(json.dumps({**report.as_dict(), "confusion_matrix_png": png}, indent=1))
    else:
        print(f"{trained.path} on {data.num_test} held-out images of {args.data}")
        print(report.format())
        print(f"confusion matrix: {png}")
    return 0


def cmd_predict(args):
    from kvision.predict import expand_images, load_trained

    trained = load_trained(args.model)
    # Which model answers, where a name could mean a run or a pretrained network.
    print(f"kvision predict: model {trained.describe()}", file=sys.stderr)
    files, problems = expand_images(args.images)
    if trained.segmenter:  # before detectors: an instance model answers boxes too
        results, line = _predict_segmentation(trained, files, args), _segmentation_line
    elif trained.detector:
        results, line = _predict_detections(trained, files, args), _detections_line
    else:
        results, line = _predict_classes(trained, files, args), _classes_line
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


def cmd_sort(args):
    from kvision.predict import load_trained, sort_images

    trained = load_trained(args.model)
    print(f"kvision sort: model {trained.describe()}", file=sys.stderr)
    summary = sort_images(trained, args.input, args.output, threshold=args.threshold)
    for folder, count in sorted(summary["copied"].items()):
        print(f"{folder}: {count}")
    for path in summary["skipped"]:
        why = summary["errors"].get(path, f"not an image: {path}")
        print(f"kvision sort: skipped ({why})", file=sys.stderr)
    print(f"copied {sum(summary['copied'].values())} images into {args.output}; "
          f"originals untouched")
    return 1 if summary["errors"] else 0  # an image that did not decode is not sorted


def _at_least_one(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="kvision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="the table of all networks")
    p.add_argument("--task", default=None)
    p.add_argument("--names-only", action="store_true")
    p.add_argument("--no-cache", action="store_true", help="profile again")
    p.add_argument("--markdown", action="store_true", help="a Markdown table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="one network, with its layer summary")
    p.add_argument("name")
    p.add_argument("--no-summary", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a network with model.fit (from scratch or "
                                      "by transfer learning)")
    p.add_argument("model", help="registry name, keras.applications name or .keras file")
    p.add_argument("--data", default="digits", help="digits, an image folder or tfds:NAME")
    p.add_argument("--backbone-weights", default=None,
                   help="imagenet, none or a weights file: transfer learning")
    p.add_argument("--regime", default=None,
                   choices=["small-similar", "large-similar", "small-different",
                            "large-different"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default 3e-3 scratch, 1e-3 transfer)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--out", default=None,
                   help="the run folder (default saved_models/MODEL); one holding a "
                        "finished run is not written into: the run goes to OUT-2, -3 …")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out as a whole instead of using OUT-2 "
                        "(an unfinished run of the same settings resumes either way)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--strategy", default=None, choices=["mirrored", "multiworker"])
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 compute, float32 outputs and export")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--no-augment", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="top-1 (top-5 with more than 5 classes), "
                                         "per-class precision/recall, confusion matrix")
    p.add_argument("model", help=".keras file, run directory or name under saved_models/")
    p.add_argument("--data", default="digits")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (as in training)")
    p.add_argument("--confusion", default=None, help="PNG path (default beside the model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels of image files, a detector's "
                                        "boxes or a segmenter's masks (drawn with --out)")
    p.add_argument("model", help=".keras file, run directory, run name under "
                                 "saved_models/, or NAME:imagenet (a registry network "
                                 "with ImageNet weights; plain NAME when no run has "
                                 "that name)")
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
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sort", help="copy a folder of photos into one folder per class")
    p.add_argument("model", help="as for predict")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="below this top probability a photo goes to _unsure/")
    p.set_defaults(func=cmd_sort)

    try:
        from kvision.export import command as export_command
    except ImportError:  # the export command arrives with the export package
        export_command = None
    if export_command is not None:
        export_command.add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show TensorFlow's start-up and absl logging")
    return parser


@contextlib.contextmanager
def _native_stderr_held():
    """What native code writes to file descriptor 2 while the block runs goes to a
    temporary file, shown only if the block fails.

    TensorFlow's C++ start-up lines (absl's "All log messages before
    absl::InitializeLog()", oneDNN's notice, the CUDA stub's and cuInit's) are written
    whatever TF_CPP_MIN_LOG_LEVEL says, so only the file descriptor can hold them.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _quiet_start():
    """Load TensorFlow and find its devices without their start-up logging; absl's
    Python logging from errors up only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _native_stderr_held():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs (cuInit) once, here
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_start()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ConnectionError, ModuleNotFoundError) as error:
        print(f"kvision {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (" (run the same command again to resume)"
                if args.command in ("train", "list") else "")
        print(f"kvision {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
