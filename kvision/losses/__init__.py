"""Losses, one file per task: ``detection``, ``segmentation``, ``embedding``."""

from kvision.losses.detection import (BoxRegressionLoss, CIoULoss, GIoULoss, IoULoss,
                                      L2Loss, SmoothL1Loss, YOLOv1Loss, YOLOv3Loss)
from kvision.losses.embedding import (CenterLoss, ContrastiveLoss, QuadrupletLoss,
                                      TripletLoss)
from kvision.losses.segmentation import DiceLoss, FocalLoss, PixelCrossEntropy, SeparationLoss

__all__ = ["BoxRegressionLoss", "CIoULoss", "GIoULoss", "IoULoss", "L2Loss", "SmoothL1Loss",
           "YOLOv1Loss", "YOLOv3Loss"]
__all__ += ["DiceLoss", "FocalLoss", "PixelCrossEntropy", "SeparationLoss"]
__all__ += ["CenterLoss", "ContrastiveLoss", "QuadrupletLoss", "TripletLoss"]
