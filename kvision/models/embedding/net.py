"""``embedding_net``: the registered embedding network that ``kvision train`` trains.

By default a small VGG-style body made for small images (the 32x32 glyph
identities): ResNet-18 at 32x32 pools its input to one 1x1 map and, trained on a
few thousand glyphs, did not beat raw pixels (held-out rank-1 0.17 against 0.32 in
one 300-step run; the README's "Embeddings" section). Any zoo or keras.applications
name as ``backbone`` goes through :func:`kvision.embedding.build` instead. Either
way: raw pixels ``"images"`` -> L2-normalized ``"embeddings"`` ``(N, dim)``.
"""

from __future__ import annotations

import keras

# The module, not its names: kvision.embedding imports kvision.models (the
# backbones), which imports this module while kvision.embedding is half-loaded.
import kvision.embedding as embedding_lib
from kvision.blocks.conv import conv_bn_act
from kvision.layers.preprocessing import ImagePreprocessing
from kvision.registry import register
from kvision.tasks.embedding import DEFAULT_LOSS, LOSSES
from kvision.tasks.model import TaskModel

PAPER = "CosFace: Large Margin Cosine Loss for Deep Face Recognition"
DEFAULT_SIZE = 32  # the glyph identities' size, kvision train's default data
WIDTH = 32


@register("embedding_net", task="embedding", family="embedding", year=2018, paper=PAPER,
          key_idea="a network mapping an image to a unit vector where one identity's "
                   "images lie close and different identities far, trained by a "
                   "softmax with a cosine margin (or by pairs and triplets)",
          default_size=DEFAULT_SIZE, min_size=8, default_classes=128,
          num_params=1_108_704,
          params_source="counted: the small body (584,288 with BatchNorm statistics) and "
                        "the Dense 4x4x256 -> 128 (524,416)")
def EmbeddingNet(backbone=None, dim=128, normalize=True, width=WIDTH, loss=DEFAULT_LOSS,
                 input_shape=None, backbone_weights=None, trainable_backbone=True,
                 name="embedding_net"):
    """An embedding network: a body, its features flattened (a named backbone's:
    average-pooled), a Dense to ``dim`` and, with ``normalize``, unit length. Input
    ``(N, 32, 32, 3)`` raw pixels by default (any fixed size of at least 8), output
    ``(N, dim)``.

    ``backbone`` None: :func:`small_body` of ``width``; a zoo or keras.applications
    name: that network (:func:`kvision.embedding.build`, with ``backbone_weights``
    and ``trainable_backbone``). ``loss``: how ``kvision train`` trains it, a key of
    :data:`kvision.tasks.embedding.LOSSES` (checked here; the network is the same).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
    if input_shape is None:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    if backbone is not None:
        return embedding_lib.build(backbone, dim=dim, normalize=normalize,
                                   input_shape=input_shape,
                                   backbone_weights=backbone_weights,
                                   trainable_backbone=trainable_backbone, name=name)
    if backbone_weights is not None:
        raise ValueError(f"The small body has no pretrained weights; got "
                         f"backbone_weights={backbone_weights!r} (give a backbone name).")
    images = keras.Input(shape=tuple(input_shape), name="images")
    # Flattened, not pooled: where a stroke lies tells glyphs apart (held-out rank-1
    # 0.71 against 0.55 pooled, one 600-step CosFace run each).
    features = keras.layers.Flatten(name="flatten")(small_body(images, width))
    return TaskModel(images, embedding_lib.embedding_head(features, dim, normalize),
                     task=embedding_lib.TASK, name=name)


def small_body(images, width=WIDTH):
    """A VGG-style body for small images (Simonyan & Zisserman's stacked 3x3
    convolutions, with BatchNorm): pixels scaled to [-1, 1], three stages of two
    conv-BN-ReLU of ``width``, ``2 width``, ``4 width`` channels, each stage ended by
    2x2 max pooling, then one conv-BN-ReLU of ``8 width``.
    ``(N, H, W, C)`` raw pixels -> ``(N, H/8, W/8, 8 width)``."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}.")
    x = ImagePreprocessing("tf", name="preprocessing")(images)
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = conv_bn_act(x, filters, 3, name=f"stage{stage}_conv1")
        x = conv_bn_act(x, filters, 3, name=f"stage{stage}_conv2")
        x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return conv_bn_act(x, 8 * width, 3, name="stage4_conv1")
