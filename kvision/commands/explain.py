"""``kvision explain``: what a model's answer on one image rests on, as a PNG: the
image beside its attribution map (:mod:`kvision.visualization.attribution`)."""

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
        # "deepdream": kvision.visualization.dream (issue 20's second half) adds its
        # entry here: a run(model, images, args) giving ("projection" or "image", ...).
    }


METHOD_NAMES = ("gradcam", "gradcam++", "saliency", "guided", "deconvnet", "occlusion")


def add_parser(subparsers):
    """Add the ``explain`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser("explain", help="a PNG of what a model's answer on one "
                                              "image rests on (Grad-CAM, saliency...)")
    p.add_argument("model", help="as for predict: a .keras file, a run, NAME:imagenet")
    p.add_argument("image", help="an image file")
    p.add_argument("--method", choices=METHOD_NAMES, default="gradcam")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--layer", default=None,
                   help="a layer name or 'outer/inner/...' through nested models "
                        "(default: the last spatial map for Grad-CAM)")
    p.add_argument("--class", dest="class_index", type=int, default=None,
                   help="the class explained (default: the top class)")
    p.add_argument("--detection", type=int, default=None,
                   help="detectors: which detection's score (default 0, the best)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Explain ``args.image``'s answer with ``args.method`` into ``args.out``."""
    import keras

    from kvision.predict import load_images, load_trained
    from kvision.visualization import attribution as A
    from kvision.visualization.layers import resolve, save_png

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
    if trained.detector:
        _check_detection(model, images, args)
    kind, found = methods()[args.method](model, images, args)
    image = images[0]
    drawn = A.overlay(image, found[0]) if kind == "map" else A.projection_image(found[0])
    save_png(_side_by_side(image, drawn), args.out)
    print(f"kvision explain: {args.method} of {trained.describe()}"
          f"{_what(trained, model, images, args)} -> {args.out}", file=sys.stderr)
    return 0


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


def _what(trained, model, images, args):
    """``", its top class 'cat' at layer top_activation"``: what was explained."""
    from kvision.visualization.layers import last_spatial_layer

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
