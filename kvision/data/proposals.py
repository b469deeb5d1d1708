"""Region proposals by selective search (Uijlings et al., 2013), cached per image.

R-CNN (Girshick et al., 2014) classifies about 2,000 class-independent proposals per
image; they come from selective search's "fast" mode: a graph-based
over-segmentation (Felzenszwalb & Huttenlocher) merged bottom-up by colour, texture,
size and fill similarity, every region met on the way becoming a box.

The implementation is OpenCV's (``cv2.ximgproc.segmentation``, in the contrib
modules): the authors' algorithm in C++, maintained, where the pure-Python packages
on PyPI (``selectivesearch``, ``selective-search``) last moved in 2017 and 2022 and
run their merging in Python. kvision depends on ``opencv-contrib-python-headless``
(a superset of ``opencv-python-headless``: both install the same ``cv2`` package, so
an environment must hold one of the two, never both).

Cost here (2 cores shared with other work, load 2-8, OpenCV 5.1): a 96x96 digit
scene takes 0.04-0.08 s in "fast" mode (about 20 proposals: ink on black splits into
few regions) and 0.12-0.22 s in "quality" (about 36); scikit-image's coffee photo
at 500x375, PASCAL's size, takes 2.3 s fast (711 proposals) and 7.6 s quality (2,624).
Thousands of training images cost hours, each time they are read: hence
:func:`cached_proposals`, which computes each image's boxes once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import tempfile
import threading

import numpy as np

MODES = ("fast", "quality")
MAX_PROPOSALS = 2000  # R-CNN's budget per image
# srand and the draws of one search, together: the C library's generator is the
# process's, and OpenCV releases the GIL while it searches.
_RANKING = threading.Lock()
_INSTALL = ("selective search needs OpenCV's contrib modules (cv2.ximgproc): "
            "pip install opencv-contrib-python-headless (uninstall opencv-python-headless "
            "first: both provide cv2)")


def _segmentation():
    """OpenCV's selective search object, imported only when proposals are asked for."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError(f"{_INSTALL}; cv2 is not installed.") from error
    if not hasattr(cv2, "ximgproc"):
        raise ImportError(f"{_INSTALL}; the installed cv2 {cv2.__version__} has no "
                          f"ximgproc.")
    return cv2, cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _seed_ranking(seed):
    """OpenCV ranks the regions by their hierarchy level times ``std::rand()`` (the
    paper's pseudo-random ranking), so the order, and which boxes a budget keeps,
    change from call to call; seeding the C library's generator fixes them. The
    generator is the process's: :func:`selective_search` holds a lock from the seed
    to its last draw, else searches in parallel threads (tf.data runs a map of
    ``SelectiveSearchProposals`` in parallel: its ``map_parallelization``) draw from
    one another's sequence and rank the same boxes in another order."""
    libc = _libc()
    if libc is not None:
        libc.srand((int(seed) + 1) % 2**32)  # glibc takes seeds 0 and 1 as the same


def _check_image(image, what="image"):
    """``image`` as ``(H, W, 3)`` uint8 RGB (grey images are repeated to 3 channels)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 2:
        raise ValueError(f"{what} must be (H, W, 3), (H, W, 1) or (H, W) pixels with "
                         f"sides of at least 2, got shape {image.shape}.")
    if image.dtype != np.uint8:
        if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 255:
            raise ValueError(f"{what}: pixels must be finite values in [0, 255], got "
                             f"[{np.nanmin(image)}, {np.nanmax(image)}].")
        image = np.round(image).astype(np.uint8)
    return np.ascontiguousarray(image)


def _check_arguments(mode, max_proposals):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if int(max_proposals) < 1:
        raise ValueError(f"max_proposals must be >= 1, got {max_proposals}.")
    return int(max_proposals)


def selective_search(image, mode="fast", max_proposals=MAX_PROPOSALS, *, seed=0):
    """Selective-search proposals of one image: ``(n, 4)`` float32 xyxy pixels
    (right/bottom edges exclusive), ``n <= max_proposals``, in OpenCV's order
    (hierarchy level times a random number, the authors' ranking, drawn from
    ``seed``: the same image and seed give the same boxes), duplicates removed.

    ``image``: ``(H, W, 3)`` RGB (or grey) pixels in [0, 255]. ``mode``: "fast"
    (R-CNN's) or "quality" (more strategies, several times slower).
    """
    max_proposals = _check_arguments(mode, max_proposals)
    image = _check_image(image)
    cv2, search = _segmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV reads BGR
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    with _RANKING:
        _seed_ranking(seed)
        rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)][:max_proposals]


def _load(source, index):
    """An image array from an array or a path (read with Pillow as RGB)."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"images[{index}]: no image file at {source!r}.")
        from PIL import Image

        with Image.open(source) as opened:
            return np.asarray(opened.convert("RGB"))
    return source


def cache_key(image, mode, seed=0):
    """The name of an image's cache file: a SHA-256 of its pixels, shape, mode and
    ranking seed."""
    digest = hashlib.sha256(f"{image.shape}|{mode}|{int(seed)}|".encode())
    digest.update(image.tobytes())
    return f"{digest.hexdigest()[:32]}_{mode}.npy"


def _read(path):
    """The cached boxes at ``path``, or None when missing or unreadable (a crash
    mid-write elsewhere, a truncated copy): those are recomputed."""
    try:
        boxes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype != np.float32:
        return None
    return boxes


def _write(path, boxes):
    """Writes a temporary file in the cache folder, then renames it: a reader never
    sees half a file, and two writers of the same image both leave a whole one."""
    handle, temporary = tempfile.mkstemp(suffix=".npy.tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, boxes)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def cached_proposals(images, cache_dir, *, mode="fast", max_proposals=MAX_PROPOSALS,
                     seed=0):
    """:func:`selective_search` of every image, each computed once: a list of
    ``(n_i, 4)`` float32 xyxy arrays.

    ``images``: an ``(N, H, W, C)`` array or a list of arrays and/or image paths.
    ``cache_dir``: a folder (made if missing) of one ``.npy`` per image and mode,
    named by a hash of the pixels (:func:`cache_key`), so renamed or moved files
    hit the cache and edited ones miss it. All of an image's proposals are stored;
    ``max_proposals`` cuts what is returned. A cache file that does not read back
    as ``(n, 4)`` float32 is recomputed and rewritten.
    """
    max_proposals = _check_arguments(mode, max_proposals)
    if cache_dir is None:
        raise ValueError("cache_dir must be a folder path, got None.")
    os.makedirs(cache_dir, exist_ok=True)
    found = []
    for index, source in enumerate(images):
        image = _check_image(_load(source, index), f"images[{index}]")
        path = os.path.join(cache_dir, cache_key(image, mode, seed))
        boxes = _read(path)
        if boxes is None:
            boxes = selective_search(image, mode, max_proposals=np.iinfo(np.int32).max,
                                     seed=seed)
            _write(path, boxes)
        found.append(boxes[:max_proposals])
    return found
