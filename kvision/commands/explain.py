"""``kvision explain``: what a model's answer on one image rests on, as a PNG: the
image beside its attribution map (:mod:`kvision.visualization.attribution`), or
beside its DeepDream (:mod:`kvision.visualization.dream`)."""

from __future__ import annotations

import sys


def _maps(function, takes_layer=True):
    """A method giving ``(N, H, W)`` maps in [0, 1], drawn over the image."""
    def run(model, images, args):
        kwargs = {"class_index": args.class_index, "detection": args.detection}
        if takes_layer:
            kwargs["layer"] = args.layer
        elif args.layer is not None:
            raise ValueError(f"--layer does not apply to {args.method} (it works on the "
                             f"pixels); guided and deconvnet project a layer's unit.")
        return "map", function(model, images, **kwargs)
    return run


def _projection(function):
    """A method giving signed pixel projections ``(N, H, W, C)``, drawn as images;
    with ``--layer`` they project that layer's most active channel."""
    def run(model, images, args):
        if args.layer is not None and args.class_index is not None:
            raise ValueError(f"--class does not apply to {args.method} with --layer: "
                             f"it projects the layer's most active channel; give "
                             f"one of the two.")
        return "projection", function(model, images, layer=args.layer,
                                      class_index=args.class_index,
                                      detection=args.detection)
    return run


def methods() -> dict:
    """``{--method name: run(model, images, args) -> (kind, arrays)}``; kind "map"
    is drawn over the image, "projection" beside it."""
    from kvision.visualization import attribution as A

    return {
        "gradcam": _maps(A.gradcam),
        "gradcam++": _maps(A.gradcam_plus_plus),
        "saliency": _maps(A.saliency, takes_layer=False),
        "guided": _projection(A.guided_backprop),
        "deconvnet": _projection(A.deconvnet),
        "occlusion": _maps(A.occlusion, takes_layer=False),
        "deepdream": _dream,
    }


METHOD_NAMES = ("gradcam", "gradcam++", "saliency", "guided", "deconvnet", "occlusion",
                "deepdream")

# Methods that failed Adebayo et al.'s model-randomization check where it was
# measured (README, "Seeing inside a network"): said with every map they draw.
FLAGGED = {"gradcam++": "Grad-CAM++ failed the model-randomization check on the "
                        "README's digit-scene classifier (rank correlation 0.82-0.83 "
                        "with a randomly initialized copy's maps): its map may show "
                        "the image more than the model; "
                        "kvision.visualization.randomization_check tests it on yours"}


def _dream(model, images, args):
    """DeepDream of the image (keras.io's recipe: 3 octaves of 20 steps) raising the
    activation of ``--layer`` (default :func:`~kvision.visualization.dream.
    dream_layers`'), drawn beside it; one progress line per octave."""
    from kvision.visualization.dream import deep_dream

    for flag, value in (("--class", args.class_index), ("--detection", args.detection)):
        if value is not None:
            raise ValueError(f"{flag} does not apply to deepdream: it raises the "
                             f"activation of --layer, not a class's score.")

    def progress(octave, octaves, shape):
        print(f"kvision explain: deepdream octave {octave}/{octaves} at "
              f"{shape[1]}x{shape[0]}", file=sys.stderr)
    return "image", deep_dream(model, images[0], layers=args.layer,
                               progress=progress)[None]


def add_parser(subparsers):
    """Add the ``explain`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("explain", help="a PNG of what a model's answer on one "
                                              "image rests on (Grad-CAM, saliency...)")
    p.add_argument("model", help="as for predict: a .keras file, a run, NAME:imagenet")
    p.add_argument("image", help="an image file")
    p.add_argument("--method", default="gradcam", metavar="|".join(METHOD_NAMES),
                   help="what to draw (default gradcam)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--layer", default=None,
                   help="a layer name or 'outer/inner/...' through nested models "
                        "(default: the last spatial map for Grad-CAM)")
    p.add_argument("--class", dest="class_index", default=None,
                   help="the class explained (default: the top class)")
    p.add_argument("--detection", type=int, default=None,
                   help="detectors: which detection's score (default 0, the best)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Explain ``args.image``'s answer with ``args.method`` into ``args.out``."""
    import keras
    import numpy as np

    from kvision.predict import load_images, load_trained
    from kvision.visualization import attribution as A
    from kvision.visualization.layers import resolve, save_png

    if args.method not in METHOD_NAMES:
        raise ValueError(f"--method must be one of {', '.join(METHOD_NAMES)}; got "
                         f"{args.method!r}.")
    args.class_index = _class_index(args.class_index)
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must be a .png file, got {args.out!r}.")
    trained = load_trained(args.model)
    if not isinstance(trained.model, keras.Model):
        raise ValueError(f"{trained.path} is an export; explain needs the Keras model "
                         f"(a .keras file, a run or NAME:imagenet) to take gradients.")
    model = trained.model
    if args.layer is not None:
        resolve(model, args.layer)  # an unknown path fails before any computing
    images, _, _ = load_images([args.image], trained)
    _check_class(trained, model, args)
    if trained.detector:
        _check_detection(model, images, args)
    kind, found = methods()[args.method](model, images, args)
    image = images[0]
    drawn = {"map": lambda: A.overlay(image, found[0]),
             "projection": lambda: A.projection_image(found[0]),
             "image": lambda: np.round(A._rgb(found[0]) * 255).astype("uint8")}[kind]()
    save_png(_side_by_side(image, drawn), args.out)
    print(f"kvision explain: {args.method} of {trained.describe()}"
          f"{_what(trained, model, images, args, found)} -> {args.out}", file=sys.stderr)
    if args.method in FLAGGED:
        print(f"kvision explain: note: {FLAGGED[args.method]}.", file=sys.stderr)
    return 0


def _class_index(text):
    """``--class`` as an integer >= 0 (None when not given)."""
    if text is None or isinstance(text, int):
        return text
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise ValueError(f"--class takes a class index (an integer: 0, 1, ...), got "
                         f"{text!r}.")
    return index


def _check_class(trained, model, args):
    """``--class`` must be one of the model's classes (its labels, else the width of
    its one output); a detector's score is its detection's, not a class's."""
    if args.class_index is None:
        return
    if trained.detector:
        raise ValueError("--class does not apply to a detector: give --detection, the "
                         "number of the detection whose score is explained.")
    count = len(trained.class_names) if trained.class_names else None
    if count is None and len(model.outputs) == 1:
        count = model.outputs[0].shape[-1]
    if count is not None and args.class_index >= count:
        raise ValueError(f"--class {args.class_index}: class_index must be in [0, "
                         f"{count}) (the model has {count} classes).")


def _check_detection(model, images, args):
    """``--detection`` must name one the detector found in the image."""
    found = int(model.predict(images, verbose=0)["num_detections"][0])
    index = args.detection or 0
    if not 0 <= index < found:
        raise ValueError(f"--detection {index}: the detector found {found} detections "
                         f"in {args.image} (numbered from 0, best first).")


def _side_by_side(image, drawn):
    """The model's input and the drawing, enlarged together when small."""
    import numpy as np

    from kvision.visualization.attribution import _rgb
    from kvision.visualization.layers import _enlarge

    left = np.round(_rgb(image) * 255).astype("uint8")
    gap = np.full((left.shape[0], 2, 3), 255, "uint8")
    return _enlarge(np.concatenate([left, gap, drawn], axis=1))


def _what(trained, model, images, args, found):
    """``", its top class 'cat' at layer top_activation"``: what was explained
    (DeepDream: the layers and their loss before and after)."""
    from kvision.visualization.layers import last_spatial_layer

    if args.method == "deepdream":
        from kvision.visualization.dream import dream_layers, dream_loss

        layers = dream_layers(model, args.layer)
        return (f" at layer {', '.join(layers)}, its loss "
                f"{dream_loss(model, images[0], layers):.4g} -> "
                f"{dream_loss(model, found[0], layers):.4g}")
    where = ""
    if args.layer or args.method in ("gradcam", "gradcam++"):
        where = f" at layer {args.layer or last_spatial_layer(model)}"
    return _score_words(trained, model, images, args) + where


def _score_words(trained, model, images, args):
    """Which score was explained."""
    import numpy as np

    from kvision.tasks import DETECTING

    if trained.task in DETECTING:
        return f", detection {args.detection or 0}"
    if args.class_index is not None:
        return f", class {trained.label(args.class_index)!r}"
    if trained.task == "classification":
        top = int(np.argmax(model.predict(images, verbose=0)[0]))
        return f", its top class {trained.label(top)!r}"
    return ""
