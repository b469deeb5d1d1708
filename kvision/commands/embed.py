"""``kvision embed``: a gallery of identities for ``kvision search``, from a folder
``DIR/<identity>/*.jpg`` and a trained embedding model (a ``.keras`` run or its
SavedModel / TFLite export).

The gallery file (a cosine :class:`kvision.retrieval.Index`, ids ``identity/file``)
keeps in its metadata which model made it: its path, embedding width and input
shape, and its *fingerprint*, the embeddings of :data:`FINGERPRINT_IMAGES` seeded
images. ``kvision search`` and ``kvision embed --add`` compare the fingerprint with
the model they are given: an export of the same model (float32 to int8) embeds those
images alike, another model does not, and its vectors cannot be compared.
"""

from __future__ import annotations

import os

FINGERPRINT_IMAGES = 4
# Per-image cosine similarity between a gallery's fingerprint and the model's
# embeddings of the same images, at least: an int8 export of a model stays above it
# (0.98 at worst on 400 glyphs in the tests' model), another model's vectors are
# unrelated directions (near 0 in expectation).
SAME_MODEL_COSINE = 0.9


def add_parser(subparsers):
    """Add the ``embed`` sub-command to an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "embed", help="embed a folder of identities (DIR/<identity>/*.jpg) into a gallery "
                      "index file for kvision search")
    p.add_argument("model", help="a trained embedding model: .keras file, run directory, "
                                 "name under saved_models/, or its SavedModel / .tflite "
                                 "export")
    p.add_argument("folder", help="one sub-folder of images per identity")
    p.add_argument("--index", required=True,
                   help="the gallery file to write (.npz, kvision.retrieval.Index); "
                        "replaced whole or not at all")
    p.add_argument("--add", action="store_true",
                   help="enrol: add the folder's images to the existing gallery --index "
                        "(made by the same model) instead of replacing it")
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


def fingerprint_images(shape):
    """:data:`FINGERPRINT_IMAGES` seeded smooth images ``(n, H, W, C)`` in [0, 255]:
    random 4x4 patterns enlarged to the model's size."""
    import numpy as np

    height, width, channels = shape
    coarse = np.random.default_rng(19).uniform(0, 255, (FINGERPRINT_IMAGES, 4, 4,
                                                        channels))
    rows = np.minimum(np.arange(height) * 4 // height, 3)
    cols = np.minimum(np.arange(width) * 4 // width, 3)
    return coarse[:, rows][:, :, cols].astype("float32")


def model_identity(trained) -> dict:
    """What a gallery keeps of the model that made it (the module's docstring)."""
    from kvision.tasks.embedding import embed

    shape = (*trained.image_size, trained.channels)
    return {"model": os.path.abspath(trained.path),
            "dim": int(trained.model.output_shape[-1]), "input_shape": list(shape),
            "fingerprint": embed(trained, fingerprint_images(shape)).round(7).tolist()}


def check_gallery(index, trained, where="The gallery"):
    """A ValueError when ``index`` was not made by ``trained`` (or an export of it):
    embeddings of another width, or another fingerprint."""
    import numpy as np

    from kvision.tasks.embedding import embed

    dim = int(trained.model.output_shape[-1])
    made_by = index.metadata.get("model", "another model")
    if index.dim is not None and index.dim != dim:
        raise ValueError(f"{where} holds {index.dim}-D embeddings; the model answers "
                         f"{dim}-D: it was made by another model"
                         + (f" ({made_by})." if "model" in index.metadata else "."))
    stored = index.metadata.get("fingerprint")
    if stored is None:
        return  # a gallery from before fingerprints: its width is all there is to check
    shape = tuple(index.metadata.get("input_shape", ()))
    if shape != (*trained.image_size, trained.channels):
        raise ValueError(f"{where} was made by a model taking {shape} images ({made_by}); "
                         f"this one takes {(*trained.image_size, trained.channels)}.")
    a = np.asarray(stored, "float64")
    b = embed(trained, fingerprint_images(shape))
    cosine = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1)
                                           * np.linalg.norm(b, axis=1), 1e-12)
    if cosine.min() < SAME_MODEL_COSINE:
        raise ValueError(f"{where} was made by another model ({made_by}): this model "
                         f"embeds the gallery's fingerprint images at cosine "
                         f"{cosine.min():.3f} from it (the same model or its export: >= "
                         f"{SAME_MODEL_COSINE}). Embed the gallery again with this model.")


def run(args) -> int:
    """Embed, index (cosine) and save; print what was indexed."""
    import numpy as np

    from kvision.retrieval import Index

    trained = load_embedding_model(args.model)
    if args.add:
        index = Index.load(args.index)  # FileNotFoundError when there is none
        check_gallery(index, trained, f"The gallery {args.index}")
    else:
        index = Index("cosine", metadata={**model_identity(trained), "folders": []})
    embeddings, ids = gallery(trained, args.folder)
    if not ids:
        raise ValueError(f"No images under {args.folder}/<identity>/.")
    index.add(embeddings, ids=np.asarray(ids, str))
    folder = os.path.abspath(args.folder)
    index.metadata["folders"] = list(dict.fromkeys([*index.metadata.get("folders", []),
                                                    folder]))
    index.save(args.index)
    identities = len({i.split("/", 1)[0] for i in ids})
    print(f"{len(ids)} images of {identities} identities "
          f"{'added' if args.add else 'embedded'} ({embeddings.shape[1]}-D) into "
          f"{args.index}" + (f", which holds {len(index)} now" if args.add else ""))
    return 0
