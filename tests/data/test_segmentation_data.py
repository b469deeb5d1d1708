"""kvision.data.segmentation: VOC style folders and COCO masks round trips, held to the
scenes' own label maps and to pycocotools' annToMask; every bad input a clear error."""

import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image

from kvision.data.segmentation import (IGNORE, SegmentationData, load_segmentation,
                                       polygons_mask, write_coco_masks, write_voc)
from kvision.data.synthetic import digit_scenes

NAMES = ("background",) + tuple(str(i) for i in range(10))


@pytest.fixture(scope="module")
def scenes():
    made = digit_scenes(4, image_size=48, objects=(1, 4), seed=5)
    assert len(np.unique(made.semantic)) >= 4
    return made


def _maps(data):
    """The label maps ``(H, W)`` of every example, checked for dtypes and shapes."""
    maps = []
    for example in data.dataset.as_numpy_iterator():
        image, mask = example["images"], example["segmentation_masks"]
        assert image.dtype == np.float32 and mask.dtype == np.int32
        assert mask.shape == image.shape[:2] + (1,)
        maps.append(mask[..., 0])
    assert data.num_examples == len(maps)
    return maps


def _write_mask(path, labels, mode="P"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(labels, np.uint8)).convert(mode).save(path)


def _reference_maps(path):
    """Label maps painted from pycocotools' annToMask, later annotations over earlier,
    1 + the category's rank as label, crowd regions IGNORE."""
    from pycocotools.coco import COCO

    coco = COCO(path)
    rank = {cid: 1 + i for i, cid in enumerate(sorted(coco.getCatIds()))}
    maps = []
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        labels = np.zeros((info["height"], info["width"]), np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            labels[coco.annToMask(ann) > 0] = (IGNORE if ann["iscrowd"]
                                               else rank[ann["category_id"]])
        maps.append(labels)
    return maps


def test_voc_folder_round_trip(scenes, tmp_path):
    root = str(tmp_path / "voc")
    write_voc(scenes, root, split="train")
    with Image.open(os.path.join(root, "masks", "train", "00000.png")) as mask:
        assert mask.mode == "P" and mask.getpalette()[3:6] == [128, 0, 0]   # VOC's colours
    data = load_segmentation(root)                # masks/train found without split=
    assert isinstance(data, SegmentationData) and data.class_names == NAMES
    assert data.files[0].endswith(os.path.join("images", "train", "00000.png"))
    for got, image, want, example in zip(_maps(data), scenes.images, scenes.semantic,
                                         data.dataset.as_numpy_iterator()):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(example["images"], image)
    # 255 stays 255; an "L" mask is read as indices too; names from obj.names
    labels = scenes.semantic[1].copy()
    labels[:5, :7] = IGNORE
    _write_mask(os.path.join(root, "masks", "train", "00001.png"), labels, mode="L")
    os.remove(os.path.join(root, "classes.txt"))
    with open(os.path.join(root, "obj.names"), "w") as f:
        f.write("".join(f"class {i}\n" for i in range(11)))
    data = load_segmentation(root, split="train", num_classes=11, max_examples=2)
    assert data.class_names == tuple(f"class {i}" for i in range(11))
    np.testing.assert_array_equal(_maps(data)[1], labels)


def test_voc_numbered_names_from_the_largest_label(tmp_path):
    root = tmp_path / "voc"
    os.makedirs(root / "images")
    for name, top in (("a", 3), ("b", 6)):
        Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(root / "images" / f"{name}.jpg")
        labels = np.zeros((6, 9), np.uint8)
        labels[1, 1], labels[2, 2] = top, IGNORE          # 255 is not a class
        _write_mask(str(root / "masks" / f"{name}.png"), labels)
    assert load_segmentation(str(root)).class_names == ("background",) + tuple(
        str(i) for i in range(1, 7))
    assert load_segmentation(str(root), num_classes=9).class_names[-1] == "8"


def test_coco_polygons_agree_with_pycocotools(scenes, tmp_path):
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    path = str(tmp_path / "coco" / "annotations.json")
    write_coco_masks(scenes, path, image_dir=str(tmp_path / "coco" / "images"))
    coco = json.load(open(path))
    # the written polygons give each digit's pixels back, holes filled (COCO polygons
    # have none)
    for ann in coco["annotations"]:
        image = ann["image_id"] - 1
        drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
            ann["segmentation"], 48, 48))) > 0
        index = [i for i, m in enumerate(scenes.masks[image]) if (m & drawn).any()][0]
        np.testing.assert_array_equal(
            drawn, ndimage.binary_fill_holes(scenes.masks[image][index]))
    data = load_segmentation(path)                 # images found in images/ next to it
    assert data.class_names == NAMES
    for got, want in zip(_maps(data), _reference_maps(path)):
        np.testing.assert_array_equal(got, want)
    # sparse category ids keep their order; crowd regions become IGNORE; later
    # annotations paint over earlier ones
    for item in coco["categories"] + coco["annotations"]:
        key = "id" if "name" in item else "category_id"
        item[key] = 3 * item[key] + 4
    first = coco["annotations"][0]
    x, y = first["bbox"][:2]
    coco["annotations"].append(dict(first, id=998, iscrowd=1, segmentation=[
        [x, y, x + 10, y, x + 10, y + 10, x, y + 10]]))
    coco["annotations"].append(dict(first, id=999, category_id=3 * 10 + 4, segmentation=[
        [x + 2, y + 2, x + 6, y + 2, x + 6, y + 6, x + 2, y + 6]]))
    json.dump(coco, open(path, "w"))
    got = _maps(load_segmentation(path))
    reference = _reference_maps(path)
    assert (reference[0] == IGNORE).sum() > 0 and (reference[0] == 10).sum() >= 16
    for got_map, want in zip(got, reference):
        np.testing.assert_array_equal(got_map, want)


def _uncompressed(mask):
    """Uncompressed COCO RLE of a bool mask, counted here: runs down the columns,
    background first."""
    runs = [len(list(group)) for _, group in itertools.groupby(mask.T.ravel())]
    return {"size": list(mask.shape), "counts": ([0] if mask.T.ravel()[0] else []) + runs}


def test_coco_rle_both_forms_give_the_exact_masks(scenes, tmp_path):
    from pycocotools import mask as mask_utils

    path = str(tmp_path / "coco" / "rle.json")
    write_coco_masks(scenes, path, rle=True)
    coco = json.load(open(path))
    for ann in coco["annotations"]:              # the strings pycocotools would write
        mask = scenes.masks[ann["image_id"] - 1][
            [a["id"] for a in coco["annotations"]
             if a["image_id"] == ann["image_id"]].index(ann["id"])]
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ann["segmentation"]["counts"] == reference["counts"].decode()
    data = load_segmentation(path, num_classes=11)
    for got, want in zip(_maps(data), scenes.semantic):
        np.testing.assert_array_equal(got, want)
    # uncompressed counts lists, a crowd region among them
    for ann in coco["annotations"]:
        ann["segmentation"] = _uncompressed(mask_utils.decode(ann["segmentation"]) > 0)
    coco["annotations"][-1]["iscrowd"] = 1
    json.dump(coco, open(path, "w"))
    got, reference = _maps(load_segmentation(path)), _reference_maps(path)
    assert any((r == IGNORE).any() for r in reference)
    for got_map, want in zip(got, reference):
        np.testing.assert_array_equal(got_map, want)


def _distance_to_outline(points, polygon):
    corners = np.asarray(polygon).reshape(-1, 2)
    a, b = corners, np.roll(corners, -1, 0)
    t = np.clip(((points[:, None] - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1), 0, 1)
    return np.linalg.norm(points[:, None] - (a + t[..., None] * (b - a)), axis=-1).min(1)


def test_polygon_rasterization_is_annToMask_but_on_the_outline():
    """Random star polygons with fractional vertices: pixels differ only where the
    outline passes through them (centre within half a pixel; 0.2 px measured), and
    together under 5% of the area (3.0% measured on 300 polygons)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    differ = area = 0
    for _ in range(60):
        n = int(rng.integers(3, 12))
        centre, radius = rng.uniform(10, 38, 2), rng.uniform(3, 15, n)
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        polygon = np.stack([centre[0] + radius * np.cos(angle),
                            centre[1] + radius * np.sin(angle)], 1).ravel().tolist()
        reference = mask_utils.decode(mask_utils.merge(
            mask_utils.frPyObjects([polygon], 48, 48))) > 0
        ys, xs = np.nonzero(polygons_mask([polygon], (48, 48)) != reference)
        if len(xs):
            assert _distance_to_outline(np.stack([xs + 0.5, ys + 0.5], 1),
                                        polygon).max() < 0.5
        differ, area = differ + len(xs), area + reference.sum()
    assert 0 < differ < 0.05 * area


def test_bad_sources_are_clear_errors(scenes, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No segmentation data(.|\n)*VOC style"):
        load_segmentation(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "only" / "images")
    with pytest.raises(ValueError, match=r"images/ and masks/ subfolders(.|\n)*COCO JSON"):
        load_segmentation(str(tmp_path / "only"))
    with open(tmp_path / "notes.txt", "w") as f:
        f.write("x")
    with pytest.raises(ValueError, match=r"neither a COCO \.json"):
        load_segmentation(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="max_examples"):
        load_segmentation(str(tmp_path / "only"), max_examples=0)


def test_bad_voc_folders_are_clear_errors(scenes, tmp_path):
    root = str(tmp_path / "voc")
    write_voc(scenes, root)
    masks = os.path.join(root, "masks")
    os.remove(os.path.join(masks, "00002.png"))
    os.rename(os.path.join(masks, "00003.png"), os.path.join(masks, "extra.png"))
    with pytest.raises(ValueError, match=r"4 images under .* and 3 masks under .*; 2 images "
                                         r"have no mask \(e\.g\. \['00002', '00003'\]\); "
                                         r"1 masks have no image \(e\.g\. \['extra'\]\)\."):
        load_segmentation(root)
    os.remove(os.path.join(masks, "extra.png"))
    with pytest.raises(ValueError, match=r"and 2 masks under .*; 2 images have no mask "
                                         r"\(e\.g\. \['00002', '00003'\]\)\.$"):
        load_segmentation(root)
    for name in ("00002.png", "00003.png"):
        os.remove(os.path.join(root, "images", name))
    _write_mask(os.path.join(masks, "00001.png"), np.full((48, 40), 1))
    with pytest.raises(ValueError, match=r"00001\.png: the mask is 40x48 pixels but its "
                                         r"image .*00001\.png is 48x48"):
        load_segmentation(root)
    _write_mask(os.path.join(masks, "00001.png"), np.full((48, 48), 12))
    with pytest.raises(ValueError, match=r"00001\.png: label 12 but only 11 class names"):
        load_segmentation(root)
    _write_mask(os.path.join(masks, "00001.png"), np.full((48, 48), 1), mode="RGB")
    with pytest.raises(ValueError, match=r"00001\.png: a mask must be an index PNG .* got "
                                         r"mode 'RGB'"):
        load_segmentation(root)
    with pytest.raises(ValueError, match="num_classes=5 disagrees with the 11 classes"):
        load_segmentation(root, num_classes=5)
    with pytest.raises(FileNotFoundError, match="split"):
        load_segmentation(root, split="val")


def test_bad_coco_masks_are_clear_errors(scenes, tmp_path):
    path = str(tmp_path / "coco.json")
    write_coco_masks(scenes[:2], path, rle=True)
    coco = json.load(open(path))
    ann = coco["annotations"][0]
    for bad, message in [
            (dict(ann, category_id=42), r"annotations\[0\].*category_id 42 is not one of"),
            (dict(ann, segmentation=None), r"annotations\[0\].*segmentation must be"),
            (dict(ann, segmentation=[[1, 2, 3]]), r"segmentation must be polygons"),
            (dict(ann, segmentation=dict(ann["segmentation"], size=[40, 48])),
             r"the RLE's size \[40, 48\] is not its image's \[height, width\] \[48, 48\]")]:
        json.dump(dict(coco, annotations=[bad]), open(path, "w"))
        with pytest.raises(ValueError, match=message):
            load_segmentation(path)
    json.dump(dict(coco, images=[dict(coco["images"][0], width=50)]), open(path, "w"))
    with pytest.raises(ValueError, match=r"00000\.png: the image is 48x48 pixels but .* "
                                         r"says 50x48"):
        load_segmentation(path)
    json.dump(coco, open(path, "w"))
    with pytest.raises(ValueError, match=r"num_classes=3 disagrees with the 11 classes"):
        load_segmentation(path, num_classes=3)
    os.remove(tmp_path / "00001.png")
    with pytest.raises(FileNotFoundError, match=r"'00001\.png' is not in"):
        load_segmentation(path)


def test_tfds_offline_is_a_connection_error(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    from kvision.data import sources

    def download(self, *args, **kwargs):   # never reached: the probe answers first
        raise AssertionError("tried to download")

    monkeypatch.setattr(sources, "_reachable", lambda host: False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    with pytest.raises(ConnectionError, match=r"'oxford_iiit_pet' is not prepared .* "
                                              r"cannot be reached"):
        load_segmentation("tfds:oxford_iiit_pet", data_dir=str(tmp_path))


def test_tfds_masks_are_the_class_indices_unchanged(monkeypatch):
    import tensorflow_datasets as tfds

    from kvision.data import sources

    monkeypatch.setattr(sources, "_reachable", lambda host: True)  # mocked "downloads"
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = list(tfds.load("oxford_iiit_pet", split="train").as_numpy_iterator())
        data = load_segmentation("tfds:oxford_iiit_pet", channels=1)
        got = list(data.dataset.as_numpy_iterator())
        with pytest.raises(ValueError, match="no .*'segmentation_mask'.* not a segmentation"):
            load_segmentation("tfds:mnist")
    assert data.class_names == ("none", "pet", "background", "border")
    for example, want in zip(got, raw):
        assert example["images"].shape == want["image"].shape[:2] + (1,)
        np.testing.assert_array_equal(example["segmentation_masks"],
                                      want["segmentation_mask"].astype(np.int32))


def test_a_failed_write_leaves_the_folder_as_it_was(scenes, tmp_path):
    root = tmp_path / "voc"
    os.makedirs(root)
    (root / "keep.txt").write_text("mine")
    bad = scenes[:2]
    bad.semantic[1, 0, 0] = 300                   # not an index PNG value
    with pytest.raises(ValueError, match=r"00001\.png: labels must be 0\.\.255"):
        write_voc(bad, str(root))
    assert sorted(os.listdir(tmp_path)) == ["voc"] and os.listdir(root) == ["keep.txt"]
