import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

_TESTS_PER_COLLECTION = 8
_count = 0


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
