"""Custom layers: each a registered, serializable ``keras.Layer`` (no ``Lambda``)."""

from kvision.layers.atrous import AtrousConv2D
from kvision.layers.backbone import InferenceBackbone
from kvision.layers.detection import NonMaxSuppression
from kvision.layers.labeling import InstanceLabeling
from kvision.layers.margin import ArcFace, CosFace, MarginHead, NormFace, SphereFace
from kvision.layers.normalization import LocalResponseNormalization
from kvision.layers.overfeat import LocalizerDecode, WindowDecode
from kvision.layers.pose import HeatmapDecode, HorizontalFlip
from kvision.layers.preprocessing import ImagePreprocessing
from kvision.layers.residual import ScaledResidual
from kvision.layers.roi import RoIAlign, RoIPooling
from kvision.layers.shuffle import ChannelShuffle, ChannelSplit
from kvision.layers.upsampling import (BilinearKernel, MaxPoolingWithArgmax2D,
                                       MaxUnpooling2D, ResizeLike)
from kvision.layers.yolo import YOLOv1Decode, YOLOv1Output, YOLOv3Decode, YOLOv3Output

__all__ = ["AtrousConv2D", "ChannelShuffle", "ChannelSplit", "ImagePreprocessing",
           "InferenceBackbone", "InstanceLabeling", "LocalResponseNormalization",
           "NonMaxSuppression", "ScaledResidual"]
__all__ += ["HeatmapDecode", "HorizontalFlip"]
__all__ += ["RoIAlign", "RoIPooling"]
__all__ += ["ArcFace", "CosFace", "MarginHead", "NormFace", "SphereFace"]
__all__ += ["BilinearKernel", "LocalizerDecode", "MaxPoolingWithArgmax2D", "MaxUnpooling2D",
            "ResizeLike", "WindowDecode", "YOLOv1Decode", "YOLOv1Output", "YOLOv3Decode",
            "YOLOv3Output"]
