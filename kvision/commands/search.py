"""``kvision search``: the identities of a gallery (``kvision embed``) nearest to a
photo, with their cosine distances; "unknown" beyond ``--threshold``."""

from __future__ import annotations


def add_parser(subparsers):
    """Add the ``search`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "search", help="the gallery's identities nearest to each photo, with distances")
    p.add_argument("model", help="the embedding model that made the gallery")
    p.add_argument("images", nargs="+", help="photos to look up")
    p.add_argument("--index", required=True, help="a gallery written by kvision embed")
    p.add_argument("-k", "--top-k", type=int, default=5,
                   help="how many nearest gallery images to list (default 5)")
    p.add_argument("--threshold", type=float, default=None,
                   help="a cosine distance: a photo whose nearest image is farther is "
                        "\"unknown\" (e.g. 1 - the verification threshold of "
                        "kvision evaluate)")
    p.set_defaults(func=run)
    return p


def search(trained, index, files, k=5, threshold=None):
    """One dict per file: ``{"path", "identity", "matches": [(id, distance)]}``;
    ``identity`` is the nearest image's, or "unknown" beyond ``threshold``."""
    from kvision.predict import load_images
    from kvision.tasks.embedding import embed

    if index.dim != trained.model.output_shape[-1]:
        raise ValueError(f"The gallery holds {index.dim}-D embeddings; the model answers "
                         f"{trained.model.output_shape[-1]}-D: it was made by another "
                         f"model.")
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


def run(args) -> int:
    """Print each photo's answer and its matches; 1 when a photo did not load."""
    from kvision.commands.embed import load_embedding_model
    from kvision.retrieval import Index

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    index = Index.load(args.index)
    trained = load_embedding_model(args.model)
    results = search(trained, index, args.images, args.top_k, args.threshold)
    for result in results:
        if "error" in result:
            print(f"{result['path']}: error: {result['error']}")
            continue
        matches = ", ".join(f"{i} {d:.4f}" for i, d in result["matches"])
        print(f"{result['path']}: {result['identity']} ({matches})")
    return 1 if any("error" in r for r in results) else 0
