import json
import os

import numpy as np
import pytest

from kvision.data.detection import DetectionData, load_detection, write_coco, write_yolo
from kvision.data.synthetic import digit_scenes
from kvision.ops.boxes import BoxWarning

DIGITS = tuple(str(i) for i in range(10))


@pytest.fixture(scope="module")
def scenes():
    made = digit_scenes(5, image_size=40, objects=(0, 3), digit_size=(8, 16), seed=11)
    assert any(len(b) == 0 for b in made.boxes) and sum(len(b) for b in made.boxes) >= 5
    return made


def _examples(data):
    return list(data.dataset.as_numpy_iterator())


def _assert_same(data, scenes):
    examples = _examples(data)
    assert data.num_examples == len(examples) == len(scenes)
    for example, image, boxes, classes in zip(examples, scenes.images, scenes.boxes,
                                              scenes.classes):
        np.testing.assert_array_equal(example["images"], image)
        got = example["bounding_boxes"]
        assert got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int32
        np.testing.assert_allclose(got["boxes"], boxes.reshape(-1, 4), atol=1e-3)
        np.testing.assert_array_equal(got["labels"], classes)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_yolo_folder_round_trip(scenes, tmp_path):
    root = str(tmp_path / "yolo")
    write_yolo(scenes, root, split="train")
    # the label files, read here independently: class cx cy w h, fractions of 40 px
    for i, (boxes, classes) in enumerate(zip(scenes.boxes, scenes.classes)):
        with open(os.path.join(root, "labels", "train", f"{i:05d}.txt")) as f:
            rows = np.array([line.split() for line in f], float).reshape(-1, 5)
        np.testing.assert_array_equal(rows[:, 0], classes)
        centre, size = rows[:, 1:3] * 40, rows[:, 3:] * 40
        np.testing.assert_allclose(np.hstack([centre - size / 2, centre + size / 2]),
                                   boxes.reshape(-1, 4), atol=1e-3)
    data = load_detection(root)              # images/train found without split=
    assert isinstance(data, DetectionData) and data.class_names == DIGITS
    _assert_same(data, scenes)
    # names from data.yaml instead of classes.txt; a missing label file = no objects
    os.remove(os.path.join(root, "classes.txt"))
    _write(os.path.join(root, "data.yaml"),
           "path: .\ntrain: images/train\nnames:\n" + "".join(
               f"  {i}: digit_{i}\n" for i in range(10)))
    os.remove(os.path.join(root, "labels", "train", "00001.txt"))
    data = load_detection(root, split="train", num_classes=10)
    assert data.class_names == tuple(f"digit_{i}" for i in range(10))
    assert len(_examples(data)[1]["bounding_boxes"]["labels"]) == 0


def test_coco_json_round_trip_agrees_with_pycocotools(scenes, tmp_path):
    from pycocotools.coco import COCO

    path = str(tmp_path / "coco" / "annotations.json")
    write_coco(scenes, path)
    reference = COCO(path)
    for image_id, boxes in zip(sorted(reference.getImgIds()), scenes.boxes):
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[image_id]))
        xywh = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        np.testing.assert_allclose(np.hstack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]),
                                   boxes.reshape(-1, 4), atol=1e-3)
    _assert_same(load_detection(path), scenes)
    # sparse category ids become 0..C-1 in id order; crowd boxes are left out
    coco = json.load(open(path))
    sparse = {c["id"]: 5 * c["id"] + 2 for c in coco["categories"]}
    for item in coco["categories"] + coco["annotations"]:
        key = "id" if "name" in item else "category_id"
        item[key] = sparse[item[key]]
    crowd = dict(coco["annotations"][0], id=999, iscrowd=1)
    coco["annotations"].append(crowd)
    json.dump(coco, open(path, "w"))
    data = load_detection(path)
    assert data.category_ids == tuple(5 * (i + 1) + 2 for i in range(10))
    assert data.class_names == DIGITS
    _assert_same(data, scenes)


def test_yolo_names_from_darknet_obj_names(scenes, tmp_path):
    root = str(tmp_path / "yolo")
    write_yolo(scenes, root)
    os.remove(os.path.join(root, "classes.txt"))
    _write(os.path.join(root, "obj.names"), "".join(f"digit {i}\n" for i in range(10)))
    data = load_detection(root, num_classes=10)
    assert data.class_names == tuple(f"digit {i}" for i in range(10))
    _assert_same(data, scenes)


def test_coco_images_in_an_images_folder_next_to_the_json(scenes, tmp_path):
    path = str(tmp_path / "coco" / "annotations.json")
    write_coco(scenes, path, image_dir=str(tmp_path / "coco" / "images"))
    data = load_detection(path)
    assert data.files[0] == str(tmp_path / "coco" / "images" / "00000.png")
    _assert_same(data, scenes)
    os.remove(tmp_path / "coco" / "images" / "00002.png")
    with pytest.raises(FileNotFoundError, match=r"'00002\.png' is not in .*coco' nor "
                                                r".*coco/images'"):
        load_detection(path)


def test_bad_boxes_are_clipped_or_dropped_with_one_counted_warning(tmp_path):
    from PIL import Image

    root = tmp_path / "yolo"
    for name in ("a", "b"):
        os.makedirs(root / "images", exist_ok=True)
        Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(root / "images" / f"{name}.png")
    _write(str(root / "labels" / "a.txt"),
           "1 0.9 0.5 0.4 0.5\n"        # sticks out on the right: clipped
           "0 0.5 0.5 0.0 0.3\n"        # zero width: dropped
           "\n"
           "2 0.5 0.5 -0.2 0.4\n")      # inverted: dropped
    _write(str(root / "labels" / "b.txt"), "")  # an image with no objects
    with pytest.warns(BoxWarning, match=r"load_detection dropped 2 of 3 boxes .* in 1 of 2 "
                                        r"images, e.g. \[.*a\.txt \(image .*a\.png\)'\]"
                      ) as caught:
        data = load_detection(str(root), class_names=["a", "b", "c"])
    assert len([w for w in caught if issubclass(w.category, BoxWarning)]) == 1
    first, second = _examples(data)
    np.testing.assert_allclose(first["bounding_boxes"]["boxes"], [[35, 5, 50, 15]], atol=1e-4)
    np.testing.assert_array_equal(first["bounding_boxes"]["labels"], [1])
    assert second["bounding_boxes"]["boxes"].shape == (0, 4)


def test_malformed_and_missing_data_are_clear_errors(scenes, tmp_path):
    root = str(tmp_path / "yolo")
    write_yolo(scenes[:2], root)
    label = os.path.join(root, "labels", "00000.txt")
    good = open(label).read()
    for text, message in [("3 0.5 0.5 0.2\n", r"00000\.txt, line 2: expected 'class cx cy"),
                          ("x 0.5 0.5 0.2 0.2\n", r"line 2: expected"),
                          ("12 0.5 0.5 0.2 0.2\n", r"line 2: class 12 is outside the 10"),
                          ("1 20 20 8 8\n", r"line 2: YOLO coordinates are fractions")]:
        _write(label, "0 0.5 0.5 0.1 0.1\n" + text)
        with pytest.raises(ValueError, match=message):
            load_detection(root)
    _write(label, good)
    with pytest.raises(ValueError, match="num_classes=5 disagrees with the 10 classes"):
        load_detection(root, num_classes=5)
    with pytest.raises(FileNotFoundError, match="split"):
        load_detection(root, split="val")
    with pytest.raises(FileNotFoundError, match="No detection data"):
        load_detection(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="neither a COCO"):
        load_detection(str(tmp_path))
    path = str(tmp_path / "coco" / "ann.json")
    write_coco(scenes, path)
    coco = json.load(open(path))
    _write(path, '{"images": [\n  {"id": 1,\n}')
    with pytest.raises(ValueError, match=r"ann\.json, line 3: not valid JSON"):
        load_detection(path)
    json.dump({"images": [], "categories": []}, open(path, "w"))
    with pytest.raises(ValueError, match=r"\['annotations'\] missing"):
        load_detection(path)
    json.dump(dict(coco, annotations=[dict(coco["annotations"][0], category_id=42)]),
              open(path, "w"))
    with pytest.raises(ValueError, match=r"annotations\[0\].*category_id 42 is not one of"):
        load_detection(path)
    json.dump(dict(coco, annotations=[dict(coco["annotations"][0], bbox=[1, 2, 3])]),
              open(path, "w"))
    with pytest.raises(ValueError, match=r"annotations\[0\].*bbox must be"):
        load_detection(path)
    json.dump(coco, open(path, "w"))
    os.remove(os.path.join(os.path.dirname(path), "00001.png"))
    with pytest.raises(FileNotFoundError, match="00001.png"):
        load_detection(path)


def _fake_tfds(boxes, labels, sizes):
    """An ``as_dataset_fn`` for tfds.testing.mock_data: these boxes, every other feature
    zeros (tfds' own random mocks give bbox and label lists of unequal lengths)."""
    import tensorflow as tf

    def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
        spec = builder.info.features.get_tensor_spec()

        def fill(leaf, n):
            shape = [n if d is None else d for d in leaf.shape]
            if leaf.dtype == tf.string:
                return np.full(shape, b"x", object) if shape else b"x"
            return np.zeros(shape, leaf.dtype.as_numpy_dtype)

        def example(i):
            ex = tf.nest.map_structure(lambda leaf: fill(leaf, len(labels[i])), spec)
            ex["image"] = np.full(sizes[i] + (3,), 40 * (i + 1), np.uint8)
            ex["objects"]["bbox"] = np.asarray(boxes[i], np.float32).reshape(-1, 4)
            ex["objects"]["label"] = np.asarray(labels[i], np.int64)
            if "is_crowd" in ex["objects"]:
                ex["objects"]["is_crowd"] = np.arange(len(labels[i])) == 1
            return ex

        return tf.data.Dataset.from_generator(
            lambda: (example(i) for i in range(len(labels))), output_signature=spec)

    return as_dataset


def test_tfds_detection_datasets_with_mocked_data(monkeypatch):
    import tensorflow_datasets as tfds

    from kvision.data import sources

    monkeypatch.setattr(sources, "_reachable", lambda host: True)  # mocked "downloads"
    boxes = [[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.5]], []]
    labels = [[3, 14, 7], []]
    fake = _fake_tfds(boxes, labels, [(30, 40), (50, 20)])
    with tfds.testing.mock_data(as_dataset_fn=fake, policy=tfds.testing.MockPolicy.USE_CODE):
        voc = load_detection("tfds:voc/2007")
        voc_names = tuple(tfds.builder("voc/2007").info.features["objects"]["label"].names)
        with pytest.warns(BoxWarning, match="dropped 1 of 3 boxes"):
            voc_examples = _examples(voc)
        coco = load_detection("tfds:coco/2017:validation")
        with pytest.warns(BoxWarning, match="dropped 1 of 2 boxes"):   # crowd left out
            coco_examples = _examples(coco)
        with pytest.raises(ValueError, match="not a detection dataset"):
            load_detection("tfds:mnist")
        with pytest.raises(ValueError, match="num_classes=21 disagrees"):
            load_detection("tfds:voc/2007", num_classes=21)
    assert voc.class_names == voc_names and len(voc_names) == 20
    first, second = voc_examples
    assert first["images"].shape == (30, 40, 3) and second["images"].shape == (50, 20, 3)
    # normalized yxyx -> xyxy pixels; the zero-height box dropped
    np.testing.assert_allclose(first["bounding_boxes"]["boxes"],
                               [[0.2 * 40, 0.1 * 30, 0.6 * 40, 0.5 * 30], [0, 0, 40, 30]],
                               atol=1e-4)
    np.testing.assert_array_equal(first["bounding_boxes"]["labels"], [3, 14])
    assert second["bounding_boxes"]["boxes"].shape == (0, 4)
    assert len(coco.class_names) == 80      # the crowd box (the second) is left out
    np.testing.assert_array_equal(coco_examples[0]["bounding_boxes"]["labels"], [3])


def test_tfds_offline_is_a_connection_error(monkeypatch, tmp_path):
    import requests
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(ConnectionError, match="'voc/2007'"):
        load_detection("tfds:voc/2007", data_dir=str(tmp_path))
