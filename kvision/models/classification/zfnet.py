"""ZFNet (Zeiler & Fergus, 2013, "Visualizing and Understanding Convolutional
Networks"): AlexNet with a 7x7/2 first layer and a 5x5/2 second one, found by
visualizing the features (the paper's Fig. 3 layout, one GPU, dense connections).

224 -> conv1 7x7/2 96 (110) -> pool 3x3/2 (55) -> LRN -> conv2 5x5/2 256 (26) ->
pool (13) -> LRN -> conv3 384 -> conv4 384 -> conv5 256 (13) -> pool (6) ->
FC4096 -> FC4096 -> classes.
"""

import keras

from kvision.blocks.pooling import max_pool_ceil
from kvision.layers import LocalResponseNormalization
from kvision.models._builder import build, builder_args
from kvision.models.classification.alexnet import fc_head
from kvision.registry import ilsvrc_entry, published, register

PAPER = "Visualizing and Understanding Convolutional Networks"

# (filters, kernel, stride, padding) of conv1..conv5; a max-pool follows 1, 2 and 5,
# the LRN ("contrast normalized across feature maps") the pools of 1 and 2.
CONVS = ((96, 7, 2, 1), (256, 5, 2, 0), (384, 3, 1, 1), (384, 3, 1, 1),
         (256, 3, 1, 1))


def zfnet_body(x):
    """The five conv layers; ``(N, 224, 224, 3) -> (N, 6, 6, 256)``.

    The paper's sizes 110, 55, 26, 13, 6 fix the paddings: 1 for the 7x7/2 conv,
    none for the 5x5/2, and pools that round up (55 = ceil(107/2) + 1).
    """
    for i, (filters, kernel, stride, pad) in enumerate(CONVS, start=1):
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"conv{i}_pad")(x)
        x = keras.layers.Conv2D(filters, kernel, strides=stride, activation="relu",
                                name=f"conv{i}")(x)
        if i in (1, 2, 5):
            x = max_pool_ceil(x, name=f"pool{i}")
        if i in (1, 2):
            x = LocalResponseNormalization(name=f"lrn{i}")(x)
    return x


def zfnet_head(x, classes, classifier_activation):
    """Flatten the 6x6x256 map -> FC4096 -> FC4096 (dropout 0.5 after each) -> classes."""
    return fc_head(x, classes, classifier_activation, dropout_first=False)


@register("zfnet", task="classification", family="zfnet", year=2013, paper=PAPER,
          key_idea="AlexNet retuned by visualizing features: 7x7/2 conv1",
          default_size=224, min_size=47, num_params=62_357_608,
          params_convention="trainable",
          params_source="paper Fig. 3 layout (no BatchNorm, so all parameters): "
                        "conv 3,726,464 + FC 58,631,144",
          stage_outputs={4: "lrn1", 8: "conv2", 16: "conv5", 32: "pool5"},
          accuracy=published(61.6, 83.5, "Zeiler & Fergus 2013, Table 2: 1 convnet as "
                             "in Fig. 3, val error 38.4 / 16.5"),
          # Clarifai's 0.117 (0.112 with outside data) as github.com/BVLC/caffe issue
          # 32 quotes the results page, 11.74 % in cnblogs.com/vincent1997/p/10901875
          # (a table of the winners); the page's own classification table could not
          # be read here (the stored copy's excerpt ends in the detection table).
          ilsvrc=ilsvrc_entry(2013, 11.7, "Clarifai (Zeiler), winner without outside "
                              "data: an ensemble of ZF-style nets",
                              "ILSVRC 2013 results, image-net.org/challenges/LSVRC/2013/"
                              "results.php: 0.117 without outside data, as quoted in "
                              "BVLC/caffe issue 32"))
def ZFNet(include_top=True, weights=None, input_tensor=None, input_shape=None,
          pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ZFNet, the layout of Fig. 3 of Zeiler & Fergus (62.4M parameters).

    Input ``(224, 224, 3)`` (any size >= 47 with ``include_top=False``; the Flatten
    head fixes the size otherwise); output ``(N, classes)`` or features
    ``(N, 6, 6, 256)`` at 224 (stride 32).
    """
    return build("zfnet", zfnet_body, head=zfnet_head, fixed_size=True,
                 **builder_args(locals()))
