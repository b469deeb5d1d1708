import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

_TESTS_PER_COLLECTION = 8
_count = 0


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Give ``xdist_group``-marked tests the ``@group`` id suffix ``--dist loadgroup``
    schedules by. pytest-xdist 3.8 sets ``item._nodeid``, which pytest 9 no longer
    reads (``nodeid`` comes from ``item._id``), so every group was spread over both
    workers and its session and module fixtures (a trained pose run, SegNet, the
    detectors' exports) were built once per worker: about 45 s of the suite's wall
    time. Workers only; a no-op where xdist already added the suffix."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name",
                                                                           "default"))
                        for mark in item.iter_markers("xdist_group")})
        if not names or "@" in item.nodeid:
            continue
        grouped = f"{item.nodeid}@{'_'.join(names)}"
        if hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(grouped)
        else:
            item._nodeid = grouped


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Free the graph of earlier tests: the zoo builds dozens of big models.

    Keras' global state is reset after every test; Python's cycle collector (the
    slow part of ``clear_session``, ~0.5 s each time) runs every few tests, which
    keeps memory bounded without paying it per test.
    """
    global _count
    yield
    keras.backend.clear_session(free_memory=False)
    _count += 1
    if _count % _TESTS_PER_COLLECTION == 0:
        gc.collect()


@pytest.fixture(scope="session")
def coco_reference():
    """pycocotools' COCOeval as tests/metrics/test_detection_metrics.py drives it:
    ``coco_reference(ground_truth, detections, iou_type="bbox")`` -> its figures."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent / "metrics" / "test_detection_metrics.py"
    spec = importlib.util.spec_from_file_location("_detection_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.coco_reference
