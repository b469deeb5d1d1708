"""``kvision search``: the identities of a gallery (``kvision embed``) nearest to a
photo, with their cosine distances; "unknown" beyond the threshold.

The threshold is the one ``kvision evaluate`` chose for the model (the equal-error
point of pair verification on held-out identities, stored beside the model as
``<model>.threshold.json``, :func:`store_threshold`), unless ``--threshold`` gives
another. ``--out grid.png`` draws each photo beside its nearest gallery images,
with their identities and distances.
"""

from __future__ import annotations

import json
import os

THRESHOLD_SUFFIX = ".threshold.json"
TILE = 96  # pixels of one image in the --out grid
CAPTION = 28


def add_parser(subparsers):
    """Add the ``search`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "search", help="the gallery's identities nearest to each photo, with distances")
    p.add_argument("model", help="the embedding model that made the gallery (or its "
                                 "export)")
    p.add_argument("images", nargs="+", help="photos to look up")
    p.add_argument("--index", required=True, help="a gallery written by kvision embed")
    p.add_argument("-k", "--top-k", type=int, default=5,
                   help="how many nearest gallery images to list (default 5)")
    p.add_argument("--threshold", type=float, default=None,
                   help="a cosine distance: a photo whose nearest image is farther is "
                        "\"unknown\" (default: the one kvision evaluate stored for the "
                        "model, 1 - its verification threshold)")
    p.add_argument("--out", default=None,
                   help="a PNG grid: each photo, then its nearest gallery images with "
                        "identity and distance")
    p.set_defaults(func=run)
    return p


def threshold_path(model_path) -> str:
    """Where the verification threshold of the model at ``model_path`` is kept:
    ``run/embedding_net.keras`` -> ``run/embedding_net.threshold.json``, a
    SavedModel version folder ``m/1`` -> ``m/1.threshold.json``."""
    path = os.path.normpath(os.fspath(model_path))
    stem = os.path.splitext(path)[0] if os.path.isfile(path) else path
    return stem + THRESHOLD_SUFFIX


def store_threshold(trained, figures, description) -> str:
    """Keep the verification threshold of ``figures`` (an embedding report's: cosine
    similarity at the equal-error point) beside the model; its path."""
    from kvision._files import write_text_atomically

    record = {"similarity": float(figures["threshold"]),
              "distance": 1.0 - float(figures["threshold"]), "eer": float(figures["eer"]),
              "pairs": int(figures["pairs"]), "data": description,
              "model": os.path.abspath(trained.path),
              "chosen": "the equal-error point of pair verification (kvision evaluate)"}
    return write_text_atomically(threshold_path(trained.path),
                                 json.dumps(record, indent=1) + "\n")


def stored_threshold(trained):
    """``(cosine distance, path)`` kvision evaluate stored for the model, or
    ``(None, None)``; a ValueError for a file that is not one."""
    path = threshold_path(trained.path)
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as f:
            distance = float(json.load(f)["distance"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a threshold kvision evaluate wrote ({error}); "
                         f"evaluate the model again or pass --threshold.") from None
    return distance, path


def search(trained, index, files, k=5, threshold=None):
    """One dict per file: ``{"path", "identity", "matches": [(id, distance)]}``;
    ``identity`` is the nearest image's, or "unknown" beyond ``threshold``."""
    from kvision.commands.embed import check_gallery
    from kvision.predict import load_images
    from kvision.tasks.embedding import embed

    check_gallery(index, trained)
    images, kept, failed = load_images(files, trained, on_error="skip")
    results = [{"path": path, "error": why} for path, why in failed.items()]
    if not len(kept):
        return results
    ids, distances = index.query(embed(trained, images), k=min(k, len(index)))
    for path, row, dist in zip(kept, ids, distances):
        nearest = str(row[0]).split("/", 1)[0]
        known = threshold is None or dist[0] <= threshold
        results.append({"path": path, "identity": nearest if known else "unknown",
                        "matches": [(str(i), float(d)) for i, d in zip(row, dist)]})
    return results


def draw_matches(results, folders, out, channels=3):
    """A PNG at ``out``: one row per answered photo, the photo then its matches, each
    captioned (identity and distance; the photo with the answer); gallery images
    are found under ``folders`` (those of the gallery's metadata)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from kvision.data import load_image
    from kvision.visualization.layers import save_png
    from kvision.visualization.masks import _font

    rows = [r for r in results if "matches" in r]
    if not rows:
        raise ValueError("No photo was answered: nothing to draw.")
    columns = 1 + max(len(r["matches"]) for r in rows)
    canvas = Image.new("RGB", (columns * TILE, len(rows) * (TILE + CAPTION)), "white")
    draw, font = ImageDraw.Draw(canvas), _font(11)

    def tile(path):
        if path is None:
            return Image.new("RGB", (TILE, TILE), (200, 200, 200))
        pixels = load_image(path, (TILE, TILE), channels=3)
        return Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))

    for y, result in enumerate(rows):
        top = y * (TILE + CAPTION)
        cells = [(result["path"], f"probe: {result['identity']}")]
        cells += [(_find(i, folders), f"{i.split('/', 1)[0]}\n{max(d, 0.0):.4f}")
                  for i, d in result["matches"]]
        for x, (path, caption) in enumerate(cells):
            canvas.paste(tile(path), (x * TILE, top))
            draw.multiline_text((x * TILE + 2, top + TILE + 1), caption, fill="black",
                                font=font, spacing=1)
    return save_png(np.asarray(canvas), out)


def _find(gallery_id, folders):
    """The image file of ``identity/file`` under one of ``folders``, or None."""
    for folder in folders:
        path = os.path.join(folder, *gallery_id.split("/"))
        if os.path.isfile(path):
            return path
    return None


def run(args) -> int:
    """Print each photo's answer and its matches; 1 when a photo did not load."""
    import sys

    from kvision.commands.embed import check_gallery, load_embedding_model
    from kvision.retrieval import Index

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.out is not None and not args.out.lower().endswith(".png"):
        raise ValueError(f"--out writes a PNG grid: expected a .png path, got "
                         f"{args.out!r}.")
    index = Index.load(args.index)
    trained = load_embedding_model(args.model)
    check_gallery(index, trained, f"The gallery {args.index}")
    threshold = args.threshold
    if threshold is None:
        threshold, source = stored_threshold(trained)
        print("kvision search: " + (
            f"'unknown' beyond cosine distance {threshold:.4f}, the threshold kvision "
            f"evaluate chose ({source})" if threshold is not None else
            f"no threshold stored for {trained.path} (kvision evaluate stores one): "
            f"every photo is given its nearest identity"), file=sys.stderr)
    results = search(trained, index, args.images, args.top_k, threshold)
    for result in results:
        if "error" in result:
            print(f"{result['path']}: error: {result['error']}")
            continue
        matches = ", ".join(f"{i} {max(d, 0.0):.4f}" for i, d in result["matches"])
        print(f"{result['path']}: {result['identity']} ({matches})")
    if args.out is not None and any("matches" in r for r in results):
        draw_matches(results, index.metadata.get("folders", []), args.out)
        print(f"matches drawn in {args.out}")
    return 1 if any("error" in r for r in results) else 0
