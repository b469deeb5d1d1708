"""``kvision embed``: a gallery of identities for ``kvision search``, from a folder
``DIR/<identity>/*.jpg`` and a trained embedding model."""

from __future__ import annotations

import os


def add_parser(subparsers):
    """Add the ``embed`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "embed", help="embed a folder of identities (DIR/<identity>/*.jpg) into a gallery "
                      "index file for kvision search")
    p.add_argument("model", help="a trained embedding model: .keras file, run directory "
                                 "or name under saved_models/")
    p.add_argument("folder", help="one sub-folder of images per identity")
    p.add_argument("--index", required=True,
                   help="the gallery file to write (.npz, kvision.retrieval.Index); "
                        "replaced whole or not at all")
    p.set_defaults(func=run)
    return p


def load_embedding_model(ref):
    """A trained model that answers embeddings, else a ValueError saying what it is."""
    from kvision.predict import load_trained
    from kvision.tasks import noun

    trained = load_trained(ref)
    if trained.task != "embedding":
        raise ValueError(f"{trained.path} is a {noun(trained.task)}, not an embedding "
                         f"model: train one with `kvision train embedding_net`.")
    return trained


def gallery(trained, folder):
    """``(embeddings, ids)`` of every image under ``folder/<identity>/``: ids are the
    paths ``identity/file`` (unique; the identity is their first part)."""
    from kvision.data.folders import list_images
    from kvision.predict import load_images
    from kvision.tasks.embedding import embed

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No folder of identities at {folder!r}: expected "
                                f"{folder}/<identity>/*.jpg.")
    paths, _, _ = list_images(folder)
    images, kept, _ = load_images(paths, trained)
    ids = [os.path.relpath(path, folder).replace(os.sep, "/") for path in kept]
    return embed(trained, images), ids


def run(args) -> int:
    """Embed, index (cosine) and save; print what was indexed."""
    import numpy as np

    from kvision.retrieval import Index

    trained = load_embedding_model(args.model)
    embeddings, ids = gallery(trained, args.folder)
    index = Index("cosine").add(embeddings, ids=np.asarray(ids, str))
    index.save(args.index)
    identities = len({i.split("/", 1)[0] for i in ids})
    print(f"{len(ids)} images of {identities} identities embedded "
          f"({embeddings.shape[1]}-D) into {args.index}")
    return 0
