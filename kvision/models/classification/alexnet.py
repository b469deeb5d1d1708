"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012, "ImageNet Classification with Deep
Convolutional Neural Networks"): five convolutions, three max-pools, three FC layers.

The layout is torchvision's one-GPU variant (64-192-384-256-256 channels, "One weird
trick", Krizhevsky 2014) rather than the paper's two-GPU 96-256-384-384-256; the
paper's local response normalization after conv1 and conv2 is a knob.
"""

import keras

from kvision.layers import LocalResponseNormalization
from kvision.models._builder import build, builder_args
from kvision.registry import ilsvrc_entry, register
from kvision.weights_torch import torchvision_weights

PAPER = "ImageNet Classification with Deep Convolutional Neural Networks"

# (filters, kernel, stride, padding) of conv1..conv5; a max-pool follows 1, 2 and 5.
CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1),
         (256, 3, 1, 1))
POOLED = (1, 2, 5)


def alexnet_body(x, local_response_norm=False):
    """conv1..conv5 with ReLU and 3x3/2 max-pools; ``(N, H, W, 3) -> (N, H/32, W/32, 256)``.

    ``local_response_norm`` puts the paper's LRN (k=2, n=5, alpha=1e-4, beta=0.75)
    after the ReLU of conv1 and conv2, before their pools, as in Section 3.3.
    """
    for i, (filters, kernel, stride, pad) in enumerate(CONVS, start=1):
        # torchvision pads explicitly (2 for the 11x11/4): an exact, symmetric pad.
        x = keras.layers.ZeroPadding2D(pad, name=f"conv{i}_pad")(x)
        x = keras.layers.Conv2D(filters, kernel, strides=stride, activation="relu",
                                name=f"conv{i}")(x)
        if local_response_norm and i in (1, 2):
            x = LocalResponseNormalization(name=f"lrn{i}")(x)
        if i in POOLED:
            x = keras.layers.MaxPooling2D(3, strides=2, name=f"pool{i}")(x)
    return x


def fc_head(x, classes, classifier_activation, *, dropout=0.5, dropout_first=True):
    """Flatten -> FC4096 -> FC4096 -> classes with dropout on the two hidden layers.

    ``dropout_first``: torchvision drops the inputs of fc1 and fc2; the papers
    (Caffe's ``drop6``/``drop7``) drop their outputs. Identical at inference.
    """
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        if dropout_first:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
        x = keras.layers.Dense(4096, activation="relu", name=f"fc{i}")(x)
        if not dropout_first:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.layers.Dense(classes, activation=classifier_activation,
                              name="predictions")(x)


def alexnet_head(x, classes, classifier_activation):
    """torchvision's top: adaptive average pool to 6x6, then :func:`fc_head`.

    The pool makes the 9216-input fc1 fit any input size (identity at 224).
    """
    x = keras.layers.AdaptiveAveragePooling2D(6, name="avgpool")(x)
    return fc_head(x, classes, classifier_activation)


@register("alexnet", task="classification", family="alexnet", year=2012, paper=PAPER,
          key_idea="deep CNN on GPUs: ReLU, dropout, overlapping pooling",
          default_size=224, min_size=63, num_params=61_100_840,
          params_convention="trainable",
          params_source="torchvision alexnet (AlexNet_Weights.IMAGENET1K_V1 "
                        "num_params); no BatchNorm, so all parameters",
          stage_outputs={4: "conv1", 8: "conv2", 16: "conv5", 32: "pool5"},
          ilsvrc=ilsvrc_entry(2012, 15.3, "SuperVision, winner: 7 CNNs (2 pre-trained on "
                              "ImageNet Fall 2011)", "Krizhevsky et al. 2012, Table 2"),
          **torchvision_weights("alexnet", "alexnet-owt-7be5be79.pth", 56.522, 79.066))
def AlexNet(include_top=True, weights=None, input_tensor=None, input_shape=None,
            pooling=None, classes=1000, classifier_activation="softmax", name=None,
            local_response_norm=False):
    """AlexNet, torchvision's layout (61.1M parameters).

    Input ``(224, 224, 3)`` (any size >= 63; with ``include_top`` the size must be
    known, for the 6x6 adaptive pool); output ``(N, classes)`` or features
    ``(N, H/32, W/32, 256)`` (6x6 at 224). ``local_response_norm=True`` adds the
    paper's LRN after conv1 and conv2 (no parameters).
    """

    def body(x):
        return alexnet_body(x, local_response_norm)

    return build("alexnet", body, head=alexnet_head, fixed_size=True,
                 **builder_args(locals()))
