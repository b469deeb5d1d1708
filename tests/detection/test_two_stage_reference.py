"""The two-stage detectors' learned parts compute what their references compute.

Faster R-CNN and Mask R-CNN against torchvision's FeaturePyramidNetwork, RPNHead,
MultiScaleRoIAlign, TwoMLPHead + FastRCNNPredictor, MaskRCNNHeads +
MaskRCNNPredictor and BoxCoder; Fast R-CNN against its Caffe definition (VGG-16
conv5_3, ROIPooling with Caffe's rounding, fc6/fc7 on the ``(C, H, W)`` flattening);
R-CNN's scorer against torchvision's AlexNet features and linear heads. The
references (``reference/two_stage_nets.py``, NumPy, float64) take a torch-style state
dict made from the small built kvision model (every weight and bias re-randomised):
only the values come from kvision, the computation from the references' code.
"""

import keras
import numpy as np
import pytest

import kvision
from kvision.layers.rcnn import BoxHeadDecode
from kvision.models.detection import rcnn
from kvision.ops import rcnn as rcnn_ops
from kvision.testing import float32_atol
from reference import two_stage_nets as ref

pytestmark = pytest.mark.xdist_group("two_stage_reference")
SIDE = 128          # the pyramid's levels all hold a few cells; RoIs reach P2..P5
CLASSES = 3
# Per image: RoIs on every pyramid level (sqrt(area) < 112: P2, < 224: P3, < 448: P4,
# else P5; beyond the image where the level needs it), one under a cell wide, a
# zero row (the padding of the network's own detections).
ROIS = np.array([[[10.3, 12.7, 50.1, 41.9], [60.2, 70.4, 127.5, 120.8],
                  [3.1, 5.7, 125.4, 122.9], [-60.5, -40.2, 180.3, 190.6],
                  [-200.4, -180.9, 300.2, 290.3], [30.5, 30.5, 31.2, 33.0],
                  [0.0, 0.0, 0.0, 0.0], [70.6, 2.2, 118.9, 60.1]],
                 [[90.1, 11.8, 126.3, 101.7], [1.7, 0.4, 37.3, 22.9],
                  [-8.2, 14.6, 130.5, 127.1], [-99.9, -14.3, 150.2, 240.4],
                  [-350.7, -260.1, 420.3, 390.8], [64.2, 64.9, 64.8, 66.1],
                  [0.0, 0.0, 0.0, 0.0], [20.3, 80.7, 70.2, 126.4]]], "float32")


def _tiny_body():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for i, filters in enumerate((8, 12, 16, 16, 24)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                name=f"c{i}")(x)
    return keras.Model(inputs, x, name="tiny_body")


def _randomize(layers, rng, kernels=True):
    """Every weight of ``layers`` drawn again, biases included (they start at zero):
    kernels at about unit gain, so that the outputs keep their size through the
    layers. ``kernels=False``: the biases only (a big body's Glorot kernels are
    random already)."""
    for layer in layers:
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if len(shape) == 1:
                value = rng.normal(0.0, 0.3, shape)
            elif not kernels:
                continue
            else:
                fan_in = int(np.prod(shape[:-2])) * shape[-2]
                if isinstance(layer, keras.layers.Conv2DTranspose):
                    fan_in = int(np.prod(shape[:-2])) * shape[-1] // 4
                value = rng.normal(0.0, 1.5 / np.sqrt(fan_in), shape)
            weight.assign(value.astype("float32"))


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _conv_state(layer, name):
    """A Keras Conv2D ``(kh, kw, in, out)`` or Conv2DTranspose ``(kh, kw, out, in)``
    kernel as torch's Conv2d ``(out, in, kh, kw)`` / ConvTranspose2d ``(in, out, kh,
    kw)``: the same transpose."""
    kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    return {f"{name}.weight": kernel.transpose(3, 2, 0, 1), f"{name}.bias": bias}


def _dense_state(layer, name, chw=None):
    """A Dense ``(in, out)`` kernel as ``(out, in)``; ``chw``: the input is a flattened
    ``(H, W, C)`` map in Keras and ``(C, H, W)`` in the reference (torch's
    ``flatten(start_dim=1)``, Caffe's InnerProduct), so the rows move with it."""
    kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    if chw is not None:
        c, h, w = chw
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    return {f"{name}.weight": kernel.T, f"{name}.bias": bias}


def _nchw(x):
    return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def _check(got, expected, *, terms, depth):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape
    assert np.ptp(expected) > 0.1 * np.abs(expected).max() > 0  # not a degenerate case
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=float32_atol(expected, terms=terms, depth=depth))


# --- Faster R-CNN and Mask R-CNN (torchvision) ---------------------------------------

def _torchvision_state(model, channels):
    state = {}
    for i in range(4):
        state |= _conv_state(model.get_layer(f"fpn_inner{i}"),
                             f"backbone.fpn.inner_blocks.{i}")
        state |= _conv_state(model.get_layer(f"fpn_layer{i}"),
                             f"backbone.fpn.layer_blocks.{i}")
    for keras_name, torch_name in (("rpn_conv", "conv"), ("rpn_cls_logits", "cls_logits"),
                                   ("rpn_bbox_pred", "bbox_pred")):
        state |= _conv_state(model.get_layer(keras_name), f"rpn.head.{torch_name}")
    head = model.get_layer("box_head")
    state |= _dense_state(head.get_layer("fc6"), "roi_heads.box_head.fc6", (channels, 7, 7))
    state |= _dense_state(head.get_layer("fc7"), "roi_heads.box_head.fc7")
    for name in ("cls_score", "bbox_pred"):
        state |= _dense_state(head.get_layer(name), f"roi_heads.box_predictor.{name}")
    if "mask_head" in [layer.name for layer in model.layers]:
        mask = model.get_layer("mask_head")
        for i in range(1, 5):
            state |= _conv_state(mask.get_layer(f"mask_fcn{i}"),
                                 f"roi_heads.mask_head.mask_fcn{i}")
        for name in ("conv5_mask", "mask_fcn_logits"):
            state |= _conv_state(mask.get_layer(name), f"roi_heads.mask_predictor.{name}")
    return state


@pytest.fixture(scope="module", params=["faster_rcnn", "mask_rcnn"])
def pyramid_net(request):
    """A small network of each kind with random weights, its torch-style state dict
    and its outputs on two random images: the body's C2..C5, P2..P6, the RPN's
    outputs, and the box (and mask) head's on the network's own RoIs."""
    rng = np.random.default_rng(7)
    extra = {"mask_channels": 16} if request.param == "mask_rcnn" else {}
    model = kvision.create(request.param, classes=CLASSES, input_shape=(SIDE, SIDE, 3),
                           backbone=_tiny_body(), fpn_channels=16, representation=32,
                           rpn_pre_nms_top_n=(30, 30), rpn_post_nms_top_n=(12, 12), **extra)
    _randomize(_all_layers(model), rng)
    score = model.get_layer("box_head").get_layer("cls_score")
    score.set_weights([w * 0.2 for w in score.get_weights()])  # several classes > 0.05
    taps = {"C": [model.get_layer(f"fpn_inner{i}").input for i in range(4)],
            "P": [model.get_layer(f"fpn_layer{i}").output for i in range(4)]
            + [model.get_layer("fpn_pool").output], **model.output}
    # Pixels in [0, 1]: the layers' outputs stay of order 1 (the RPN's deltas too,
    # so that its proposals land in the image).
    images = rng.uniform(0, 1, (2, SIDE, SIDE, 3)).astype("float32")
    out = keras.tree.map_structure(np.asarray, keras.Model(model.input, taps)(images))
    return model, _torchvision_state(model, 16), out, images


def test_fpn_and_rpn_are_torchvisions_on_every_level(pyramid_net):
    model, state, out, _ = pyramid_net
    maps = ref.fpn(state, [_nchw(c) for c in out["C"]])
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]
    for got, expected in zip(out["P"], maps):
        _check(_nchw(got), expected, terms=9 * 16, depth=3)
    for name, level in zip(("P2", "P3", "P4", "P5"), out["P"]):
        np.testing.assert_array_equal(out[name], level)  # the outputs are those maps
    answers = ref.rpn_head(state, maps)
    _check(out["rpn_objectness"], np.concatenate([a[0] for a in answers], axis=1),
           terms=9 * 16, depth=5)
    _check(out["rpn_deltas"], np.concatenate([a[1] for a in answers], axis=1),
           terms=9 * 16, depth=5)


def test_level_mapping_and_box_head_are_torchvisions(pyramid_net):
    """A fixed set of RoIs, one or more on each of P2..P5, through the network's own
    pooler and box head, against MultiScaleRoIAlign (7x7, sampling 2) and TwoMLPHead
    + FastRCNNPredictor; then the network's outputs on its own proposals."""
    model, state, out, _ = pyramid_net
    boxes = [r.astype(np.float64) for r in ROIS]
    levels = ref.map_levels(np.concatenate(boxes), 2, 5)
    assert set(levels) == {0, 1, 2, 3}
    maps = [_nchw(p) for p in out["P"][:4]]
    pooled = model.get_layer("box_roi_pool")([ROIS, *out["P"][:4]])
    expected = ref.multi_scale_roi_align(maps, boxes, (SIDE, SIDE), 7, 2)
    _check(np.asarray(pooled).reshape(-1, 7, 7, 16).transpose(0, 3, 1, 2), expected,
           terms=4, depth=1)
    answers = model.get_layer("box_head")(pooled)
    logits, deltas = ref.box_head(state, expected)
    _check(np.asarray(answers["class_logits"]).reshape(logits.shape), logits,
           terms=49 * 16, depth=5)
    _check(np.asarray(answers["box_deltas"]).reshape(deltas.shape), deltas,
           terms=49 * 16, depth=5)
    # The whole network on its own proposals: the graph pools the right maps.
    own = [p.astype(np.float64) for p in out["proposals"]]
    logits, deltas = ref.box_head(state, ref.multi_scale_roi_align(maps, own, (SIDE, SIDE),
                                                                   7, 2))
    _check(out["class_logits"].reshape(logits.shape), logits, terms=49 * 16, depth=5)
    _check(out["box_deltas"].reshape(deltas.shape), deltas, terms=49 * 16, depth=5)


def test_rpn_proposals_are_torchvisions(pyramid_net):
    """The network's proposals from its RPN outputs against AnchorGenerator (sizes 32
    .. 512 on P2 .. P6, ratios 0.5, 1, 2, rounded, at the cells' corners) and
    filter_proposals (top 30 per level, decode, clip, small boxes out, NMS 0.7 per
    level, the best 12): a wrong anchor order or shape moves the boxes."""
    model, state, out, _ = pyramid_net
    grids = [p.shape[1:3] for p in out["P"]]
    anchors, counts = ref.grid_anchors((SIDE, SIDE), grids, [(32,), (64,), (128,), (256,),
                                                            (512,)], (0.5, 1.0, 2.0))
    found = ref.filter_proposals(anchors, out["rpn_objectness"], out["rpn_deltas"], counts,
                                 (SIDE, SIDE), pre_nms_top_n=30, post_nms_top_n=12)
    for boxes, valid, (expected, _) in zip(out["proposals"], out["proposal_valid"], found):
        assert valid.sum() == len(expected) > 4
        np.testing.assert_allclose(boxes[valid], expected, rtol=1e-5, atol=1e-4 * SIDE)


def test_detections_are_torchvisions_postprocess(pyramid_net):
    """The detections from the network's box head on its proposals against
    RoIHeads.postprocess_detections (score 0.05, per-class NMS 0.5, 100 per image):
    :func:`rcnn.inference_model`'s (Faster R-CNN) and the boxes Mask R-CNN's own mask
    branch pools (``mask_boxes``)."""
    model, state, out, images = pyramid_net
    expected = [ref.postprocess_detections(logits[valid], deltas[valid], boxes[valid],
                                           (SIDE, SIDE))
                for logits, deltas, boxes, valid in zip(
                    out["class_logits"], out["box_deltas"], out["proposals"],
                    out["proposal_valid"])]
    if "mask_boxes" in out:
        for boxes, (want, _, _) in zip(out["mask_boxes"], expected):
            assert len(want) > 3
            np.testing.assert_allclose(boxes[:len(want)], want, rtol=1e-5, atol=1e-4 * SIDE)
            assert not boxes[len(want):].any()          # padding
        return
    found = keras.tree.map_structure(np.asarray, rcnn.inference_model(model)(images))
    for i, (boxes, scores, labels) in enumerate(expected):
        assert found["num_detections"][i] == len(boxes) > 3
        np.testing.assert_allclose(found["boxes"][i, :len(boxes)], boxes, rtol=1e-5,
                                   atol=1e-4 * SIDE)
        np.testing.assert_allclose(found["scores"][i, :len(boxes)], scores, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(found["classes"][i, :len(boxes)], labels - 1)


@pytest.mark.parametrize("pyramid_net", ["mask_rcnn"], indirect=True)
def test_mask_head_is_torchvisions(pyramid_net):
    """MultiScaleRoIAlign 14x14 + MaskRCNNHeads + MaskRCNNPredictor on the fixed RoIs,
    then on the network's own detections (``mask_boxes``: the best 24 of each image,
    the rest is more of the same)."""
    model, state, out, _ = pyramid_net
    maps = [_nchw(p) for p in out["P"][:4]]

    def reference(boxes):
        pooled = ref.multi_scale_roi_align(maps, [b.astype(np.float64) for b in boxes],
                                           (SIDE, SIDE), 14, 2)
        logits = ref.mask_head(state, pooled)                      # (K, K+1, 28, 28)
        return logits.transpose(0, 2, 3, 1).reshape(len(boxes), -1, 28, 28, CLASSES + 1)

    pooled = model.get_layer("mask_roi_pool")([ROIS, *out["P"][:4]])
    got = np.asarray(model.get_layer("mask_head")(pooled))
    _check(got, reference(ROIS), terms=9 * 16, depth=7)
    _check(out["mask_logits"][:, :24], reference(out["mask_boxes"][:, :24]), terms=9 * 16,
           depth=7)


def test_box_decoding_is_torchvisions_box_coder():
    """BoxHeadDecode (the detections' boxes and scores) against BoxCoder((10, 10, 5,
    5)).decode_single, clip_boxes_to_image and softmax; log-size deltas past
    log(1000/16) are clamped. The RPN's decode (weights 1) too."""
    rng = np.random.default_rng(3)
    rois = np.concatenate([ROIS[:, :6], ROIS[:, 7:]], axis=1)    # boxes with an area
    batch, count = rois.shape[:2]
    logits = rng.normal(0, 2, (batch, count, CLASSES + 1)).astype("float32")
    deltas = rng.normal(0, 3, (batch, count, 4 * (CLASSES + 1))).astype("float32")
    deltas[:, :2, 2::4] = 40.0                     # exp(8) would be 2981x: clamped
    deltas[:, 5, 2::4] = 30.0                      # a sub-pixel RoI: 62.5x, not 403x
    deltas[:, 5, 3::4] = 12.0 + deltas[:, 5, 3::4]
    deltas[:, 2, 3::4] = -60.0                     # a box collapsing to under min_size
    boxes, scores, labels = (np.asarray(t) for t in BoxHeadDecode((SIDE, SIDE))(
        logits, deltas, rois, np.ones((batch, count), bool)))
    expected = ref.decode_boxes(deltas.reshape(batch * count, -1).astype(np.float64),
                                rois.reshape(-1, 4))
    expected = ref.clip_boxes_to_image(expected, (SIDE, SIDE))[:, 1:]  # background out
    np.testing.assert_allclose(boxes.reshape(expected.shape), expected, rtol=1e-5,
                               atol=1e-5 * SIDE)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities = (probabilities / probabilities.sum(-1, keepdims=True))[..., 1:]
    sides = expected[..., 2:] - expected[..., :2]
    kept = (sides >= 1e-2).all(-1).reshape(batch, -1)              # remove_small_boxes
    assert 0 < (~kept).sum() < kept.size
    np.testing.assert_allclose(scores, np.where(kept, probabilities.reshape(kept.shape), 0),
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, np.tile(np.arange(CLASSES), count)[None]
                                  .repeat(batch, 0))
    rpn = np.asarray(rcnn_ops.decode_deltas(deltas[..., :4], rois))
    np.testing.assert_allclose(rpn.reshape(-1, 4), ref.decode_boxes(
        deltas[..., :4].reshape(-1, 4).astype(np.float64), rois.reshape(-1, 4),
        weights=(1.0, 1.0, 1.0, 1.0))[:, 0], rtol=1e-5, atol=1e-5 * SIDE)


# --- Fast R-CNN (Caffe) -----------------------------------------------------------------

FAST_SIDE = 64      # fast_rcnn's smallest input: conv5_3 4x4
FAST_ROIS = np.array([[[8.0, 24.0, 40.0, 56.0], [0.0, 0.0, 63.0, 63.0],
                       [-20.3, 10.2, 30.6, 90.4], [17.9, 33.1, 18.4, 33.8],
                       [40.0, 8.0, 62.5, 23.7], [0.0, 0.0, 0.0, 0.0]],
                      [[5.5, 6.4, 60.2, 44.9], [24.0, 40.0, 56.0, 60.0],
                       [50.1, 50.2, 90.3, 95.4], [1.0, 1.0, 10.0, 10.0],
                       [33.3, 2.2, 47.7, 61.6], [12.0, 12.0, 12.0, 12.0]]], "float32")


def test_fast_rcnn_is_the_caffe_definition():
    """VGG-16 to conv5_3 (stride 16) from the preprocessed image, then for fixed
    proposals (corners on half cells: Caffe rounds halves away from zero) ROIPooling
    7x7 at 1/16, fc6 on the (C, H, W) flattening, fc7, cls_score and bbox_pred."""
    rng = np.random.default_rng(11)
    model = kvision.create("fast_rcnn", classes=CLASSES,
                           input_shape=(FAST_SIDE, FAST_SIDE, 3),
                           representation=32, max_proposals=FAST_ROIS.shape[1])
    body = model.get_layer("backbone")
    _randomize(body.layers, rng, kernels=False)
    _randomize(_all_layers(model.get_layer("box_head")), rng)
    convs = [layer for layer in body.layers if isinstance(layer, keras.layers.Conv2D)]
    names = [n for n in ref.VGG16_CONVS if n != "M"]
    assert len(convs) == len(names)
    state = {}
    for layer, name in zip(convs, names):
        state |= _conv_state(layer, name)
    head = model.get_layer("box_head")
    state |= _dense_state(head.get_layer("fc6"), "fc6", (512, 7, 7))
    for name in ("fc7", "cls_score", "bbox_pred"):
        state |= _dense_state(head.get_layer(name), name)
    images = rng.uniform(0, 255, (2, FAST_SIDE, FAST_SIDE, 3)).astype("float32")
    taps = {"input": model.get_layer("preprocessing").output, **model.output}
    out = keras.tree.map_structure(np.asarray, keras.Model(model.inputs, taps)(
        [images, FAST_ROIS]))
    conv5 = ref.fast_rcnn_vgg16_conv5(state, _nchw(out["input"][:1]))  # one: 2 s each
    _check(_nchw(out["P4"][:1]), conv5, terms=9 * 512, depth=13)
    rois = np.concatenate([np.concatenate([np.full((len(b), 1), i), b], axis=1)
                           for i, b in enumerate(FAST_ROIS)])
    logits, deltas = ref.fast_rcnn_head(state, _nchw(out["P4"]), rois)
    _check(out["class_logits"].reshape(logits.shape), logits, terms=49 * 512, depth=3)
    _check(out["box_deltas"].reshape(deltas.shape), deltas, terms=49 * 512, depth=3)


# --- R-CNN's scorer -----------------------------------------------------------------------

def test_rcnn_scorer_is_alexnet_features_and_linear_heads():
    """torchvision's AlexNet ``features`` (conv1 11/4 pad 2 ... pool5), averaged over
    space, and the three linear heads. At 95 pixels, pool5 is 2x2 (at the smallest
    input, 63, it is 1x1 and any pooling would pass)."""
    rng = np.random.default_rng(5)
    model = kvision.create("rcnn", classes=CLASSES, input_shape=(95, 95, 3))
    _randomize(_all_layers(model), rng)
    body = model.get_layer("backbone")
    state = {}
    for index, name in zip((0, 3, 6, 8, 10), ("conv1", "conv2", "conv3", "conv4", "conv5")):
        state |= _conv_state(body.get_layer(name), f"features.{index}")
    for head in ("class_logits", "svm_scores", "box_deltas"):
        state |= _dense_state(model.get_layer(head), head)
    crops = rng.uniform(0, 255, (3, 95, 95, 3)).astype("float32")
    taps = {"input": model.get_layer("preprocessing").output, **model.output}
    out = keras.tree.map_structure(np.asarray, keras.Model(model.input, taps)(crops))
    expected = ref.rcnn_scorer(state, _nchw(out["input"]))
    for name, value in expected.items():
        _check(out[name], value, terms=9 * 384, depth=7)
