"""Fast R-CNN (kvision/models/detection/fast_rcnn.py): the paper's VGG-16 head sizes,
proposals as an input, and one batch overfitted to mAP@0.5 = 1.0 from proposals
around the objects and at random."""

import keras
import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.data.synthetic import digit_scenes
from kvision.metrics.detection import evaluate
from kvision.models.detection import fast_rcnn

pytestmark = pytest.mark.xdist_group("rcnn")
SIDE = 64


def test_the_head_is_the_papers_vgg16_head():
    """fc6 (512*7*7 -> 4096) and fc7 of VGG-16, a 21-way classifier and 84 box outputs
    for PASCAL VOC's 20 classes."""
    with testing.built_at_once(values=False):
        model = kvision.create("fast_rcnn")
    head = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 21 + 21) + (
        4096 * 84 + 84)
    assert model.get_layer("box_head").count_params() == head == 119_976_041
    assert type(model.get_layer("box_roi_pool").pool).__name__ == "RoIPooling"
    assert model.input_shape[1] == (None, 2000, 4)


def _proposals(scenes, rng, around=8, random=24):
    """Per image: jittered copies of its boxes (IoU mostly above 0.5) and random
    boxes (mostly background), as a selective search would give both."""
    out = []
    for boxes in scenes.boxes:
        wh = boxes[:, 2:] - boxes[:, :2]
        jitter = rng.normal(0, 0.08, (len(boxes), around, 4)) * np.tile(wh, 2)[:, None]
        near = (boxes[:, None] + jitter).reshape(-1, 4)
        corner = rng.uniform(0, SIDE - 8, (random, 2))
        far = np.concatenate([corner, corner + rng.uniform(6, 30, (random, 2))], 1)
        out.append(np.clip(np.concatenate([near, far]), 0, SIDE).astype("float32"))
    return out


def _body():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 32, 48)):  # stride 16, no BatchNorm
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                name=f"c{i}")(x)
    return keras.Model(inputs, x, name="tiny_body")


def test_one_batch_is_overfitted_to_map_50_of_one():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    scenes = digit_scenes(4, image_size=SIDE, digit_size=(10, 24), subset="train", seed=1)
    proposals = _proposals(scenes, rng)
    model = kvision.create("fast_rcnn", classes=10, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=128, max_proposals=64)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(3e-3, 300)))
    batches = fast_rcnn.training_dataset(scenes, model, proposals=proposals, batch_size=4,
                                         shuffle=False)
    history = model.fit(batches.cache().repeat(), epochs=1, steps_per_epoch=300, verbose=0)
    assert set(fast_rcnn.HEAD_LOSSES) <= set(history.history)
    assert "rpn_box_loss" not in history.history
    detector = fast_rcnn.inference_model(model, score_threshold=0.3)
    test_proposals = fast_rcnn.pad_proposals(_proposals(scenes, rng), 64)
    out = detector.predict([scenes.images.astype("float32"), test_proposals], verbose=0)
    n = out["num_detections"]
    found = [{k: out[k][i][:n[i]] for k in ("boxes", "scores", "classes")}
             for i in range(len(n))]
    truth = [{"boxes": b, "classes": c} for b, c in zip(scenes.boxes, scenes.classes)]
    assert evaluate(truth, found)["map_50"] == 1.0


def test_padding_rows_are_not_proposals():
    padded = fast_rcnn.pad_proposals([np.ones((2, 4)) * [1, 2, 5, 6], np.zeros((0, 4))], 3)
    assert padded.shape == (2, 3, 4) and not padded[0, 2:].any() and not padded[1].any()
    model = kvision.create("fast_rcnn", classes=3, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=8, max_proposals=3)
    valid = model([np.zeros((2, SIDE, SIDE, 3), "float32"), padded])["proposal_valid"]
    np.testing.assert_array_equal(np.asarray(valid), [[True, True, False], [False] * 3])


def test_the_task_detector_searches_in_its_graph_as_selective_search_does(tmp_path,
                                                                          capsys):
    """What kvision train fast_rcnn trains on and saves: batches whose proposals are
    OpenCV's selective search of each scene (kvision.data.proposals, the reference),
    and a detector of images alone equal to the two-input detector fed those
    proposals; it loads in safe mode, kvision evaluate's figure is the two-input
    detector's, its search cut out for export (kvision.export.proposals) answers the
    same given those proposals, and kvision export refuses TFLite of it in one line
    (its SavedModel export: the test below). (The whole
    kvision train / evaluate / predict run on 8 scenes was checked by hand: minutes
    of suite time for its 200 held-out scenes, measured twice.)"""
    import json

    from kvision import cli
    from kvision.data.proposals import selective_search
    from kvision.saving import save_model
    from kvision.tasks.detection import TASK

    keras.utils.set_random_seed(0)
    scenes = digit_scenes(2, image_size=SIDE, digit_size=(10, 24), subset="train", seed=3)
    model = kvision.create("fast_rcnn", classes=10, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=16, max_proposals=64)
    reference = fast_rcnn.pad_proposals(
        [selective_search(image, "fast", 64) for image in scenes.images], 64)
    (_, boxes), _ = next(iter(fast_rcnn.training_dataset(scenes, model, batch_size=2,
                                                         shuffle=False)))
    np.testing.assert_array_equal(boxes, reference)
    from_files = fast_rcnn.training_dataset(scenes.as_dataset(), model, batch_size=2,
                                            shuffle=False)
    # Read from a tf.data set, the images are searched in parallel threads
    # (map_parallelization): the same boxes in the same order all the same (OpenCV's
    # random ranking draws from the process's generator, seeded under a lock).
    np.testing.assert_array_equal(next(iter(from_files))[0][1].numpy(), reference)
    detector = TASK.inference_model("fast_rcnn", model)
    assert len(detector.inputs) == 1
    images = scenes.images.astype("float32")
    ours = detector.predict(images, verbose=0)
    fed_detector = fast_rcnn.inference_model(model, score_threshold=0.1)
    fed = fed_detector.predict([images, reference], verbose=0)
    for key in ("classes", "num_detections"):
        np.testing.assert_array_equal(ours[key], fed[key])
    np.testing.assert_allclose(ours["boxes"], fed["boxes"], atol=1e-4)
    path = tmp_path / "fast_rcnn.keras"
    save_model(detector, path, class_names=scenes.class_names)
    assert keras.saving.load_model(path, safe_mode=True).get_layer(
        "selective_search").max_proposals == 64
    assert cli.main(["evaluate", str(path), "--data", "digit-scenes", "--max-images", "2",
                     "--json"]) == 0
    from kvision.metrics.detection import evaluate as coco
    from kvision.tasks.detection import _Shape, held_out_scenes

    held = held_out_scenes(_Shape((SIDE, SIDE), 3), 2, 0)
    expected = coco(held.ground_truth(), fed_detector.predict(
        [held.images.astype("float32"), fast_rcnn.pad_proposals(
            [selective_search(image, "fast", 64) for image in held.images], 64)],
        verbose=0))
    assert json.loads(capsys.readouterr().out)["map_50"] == pytest.approx(
        expected["map_50"], abs=1e-6)
    # kvision export: the search cut out, the proposals an input (the same detections
    # as the detector given its own search's); TFLite refused in one line.
    from kvision.export.proposals import proposal_model

    cut = proposal_model(keras.saving.load_model(path)).predict([images, reference],
                                                                verbose=0)
    for key in ("classes", "num_detections"):
        np.testing.assert_array_equal(cut[key], ours[key])
    assert cli.main(["export", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "host" in err[0] and "--format savedmodel" in err[0]
    assert not (tmp_path / "out").exists()


def _distinct_proposals(rng, n):
    """``n`` random boxes (12 pixels a side at least) no two of which round to the same
    cells of the stride-16 feature map: RoI max pooling rounds a box to those cells, so
    two such boxes would pool the same features and score exactly alike."""
    out, cells = [], set()
    while len(out) < n:
        corner = rng.uniform(0, SIDE - 12, 2)
        box = np.concatenate([corner, corner + rng.uniform(12, SIDE, 2)]).clip(0, SIDE)
        key = tuple(np.round(box / 16).astype(int))
        if key[2] > key[0] and key[3] > key[1] and key not in cells:
            cells.add(key)
            out.append(box)
    return np.array(out, "float32")


def test_the_savedmodel_served_as_tf_serving_loads_it_answers_as_the_keras_detector(
        tmp_path, capsys, monkeypatch):
    """kvision export --format savedmodel of a saved fast_rcnn detector (selective
    search inside), loaded as TF Serving does (tf.saved_model.load, serving_default):
    for images and proposals of any count it answers the detections of the Keras
    two-input detector (kvision.models.detection.fast_rcnn.inference_model, not the
    export's cut model) fed the first max_proposals of them, padded with zero rows here
    in NumPy; zero rows sent as padding change nothing; --format tflite is refused in
    one line. The export's own check (default random check images, whose selective
    search proposals pool alike) accepts it and refuses one reading 8 proposals."""
    import tensorflow as tf

    from kvision import cli
    from kvision.saving import save_model
    from kvision.tasks.detection import SCORE_THRESHOLD, TASK

    count = 16                              # max_proposals; the export checks with 16
    keras.utils.set_random_seed(0)
    model = kvision.create("fast_rcnn", classes=3, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=16, max_proposals=count)
    # Scores well separated, so that the comparison is not decided by ties: untrained,
    # raw pixels make this classifier's logits reach ~40, its softmax 1.0 or 1e-20 in
    # float32 (ties at 1.0, and few scores above the threshold). Scaled by 0.1, the
    # scores above the threshold are spread (asserted below: >= 5e-4 apart, thousands
    # of times float32's rounding), so NMS cannot choose differently in the export
    # and in Keras because of rounding; the proposals pool distinct features
    # (_distinct_proposals) of noise images (no flat background pooling alike). The
    # last class's bias raised by 2 makes a zero (padding) row score above the
    # threshold (asserted below): unmasked, padding would be detected.
    scorer = model.get_layer("box_head").get_layer("cls_score")
    weights, bias = scorer.get_weights()
    scorer.set_weights([weights * 0.1, bias + np.array([0, 0, 0, 2], "float32")])
    path = tmp_path / "fast_rcnn.keras"
    save_model(TASK.inference_model("fast_rcnn", model), path, class_names=list("abc"))
    assert cli.main(["export", str(path), "--format", "tflite",
                     "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "selective search" in err[0] and "host" in err[0] \
        and "--format savedmodel" in err[0], err
    assert not (tmp_path / "t").exists()
    # The export's own check feeds selective search's proposals of its default random
    # check images; at 64 pixels many of them round to the same cells of the 4x4
    # feature map, pool alike and score exactly alike, and NMS may break such ties one
    # way in the export and another in Keras: the check drops those (issue 17) and says
    # so. Accepted here; refused below once the export reads only 8 proposals.
    assert cli.main(["export", str(path), "--format", "savedmodel",
                     "--out", str(tmp_path / "sm")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "pooling the same feature cells as an earlier one" in out, out
    assert int(out.split(", less ")[1].split()[0]) > 0, out

    serve = tf.saved_model.load(str(tmp_path / "sm" / "1")).signatures["serving_default"]
    keras_detector = fast_rcnn.inference_model(model, score_threshold=SCORE_THRESHOLD)
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (2, SIDE, SIDE, 3)).astype("float32")
    sent = np.stack([_distinct_proposals(rng, 24) for _ in images])

    def softmax(proposals):                 # object classes' scores, in NumPy
        logits = np.asarray(model([images, proposals])["class_logits"], "float64")
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        return (scores / scores.sum(-1, keepdims=True))[..., 1:]

    for per_class in softmax(sent[:, :count]).transpose(0, 2, 1).reshape(-1, count):
        kept = np.sort(per_class[per_class > SCORE_THRESHOLD])
        assert len(kept) < 2 or np.diff(kept).min() > 5e-4, kept
    assert (softmax(np.zeros_like(sent[:, :count]))[:, 0].max(-1) > SCORE_THRESHOLD).all()

    def served(proposals):
        got = serve(images=tf.constant(images), proposals=tf.constant(proposals))
        return {k: v.numpy() for k, v in got.items()}

    def expected(proposals):               # the first `count` read, zero rows after
        padded = np.zeros((len(images), count, 4), "float32")
        rows = proposals[:, :count]
        padded[:, :rows.shape[1]] = rows
        return keras_detector.predict([images, padded], verbose=0)

    def assert_same(got, want, what):
        n = np.asarray(want["num_detections"])
        np.testing.assert_array_equal(got["num_detections"], n, err_msg=what)
        assert n.min() >= 2, (what, n)      # something to compare, in each image
        for i, k in enumerate(n):
            np.testing.assert_array_equal(got["classes"][i, :k], want["classes"][i, :k],
                                          err_msg=what)
            np.testing.assert_allclose(got["scores"][i, :k], want["scores"][i, :k],
                                       rtol=1e-4, atol=1e-6, err_msg=what)
            np.testing.assert_allclose(got["boxes"][i, :k], want["boxes"][i, :k],
                                       atol=1e-3 * SIDE, err_msg=what)
            assert [name.decode() for name in got["labels"][i, :k]] == [
                "abc"[c] for c in want["classes"][i, :k]], what
            box = got["boxes"][i, :k]       # from real proposals, none from a zero row
            assert (box[:, 2:] - box[:, :2]).min() > 0, (what, box)

    # 10 proposals (fewer than the export's check sent), 24 (more: the first 16 read).
    few = served(sent[:, :10])
    assert_same(few, expected(sent[:, :10]), "10 proposals")
    assert_same(served(sent), expected(sent), "24 proposals")
    # The same 10 with 9 zero rows as padding: as if sent alone.
    padded = np.concatenate([sent[:, :10], np.zeros((2, 9, 4), "float32")], 1)
    got = served(padded)
    assert_same(got, expected(padded), "10 proposals + 9 zero rows")
    for key in ("num_detections", "classes", "scores", "boxes"):
        np.testing.assert_array_equal(got[key], few[key])

    # The export's own check on the same default check images refuses an export whose
    # graph reads only the first 8 proposals (the Keras model given all 16).
    from kvision.export import ParityError, saved_model
    from kvision.export import savedmodel as exporter
    from kvision.export.proposals import proposal_model
    from kvision.saving import load_keras

    def first_8(proposals, count):          # broken in the graph only, not in Keras
        fitted = fit_count(proposals, count)
        return fitted if tf.executing_eagerly() else tf.concat(
            [fitted[:, :8], tf.zeros_like(fitted[:, 8:])], 1)

    fit_count = exporter.fit_count
    monkeypatch.setattr(exporter, "fit_count", first_8)
    with pytest.raises(ParityError, match="does not detect what the Keras model"):
        saved_model(proposal_model(load_keras(path)), tmp_path / "broken", warmup=False)
