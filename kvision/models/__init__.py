"""kvision's networks: ``create(name)``, ``list_models()``, the builders, ``profile``.

Every registered network is also a public CapWords builder here
(``kvision.models.ResNet50(...)``), the keras.applications way.
"""

from kvision import registry as _registry
# Importing the family packages registers their networks.
from kvision.models import classification, detection, embedding, pose, segmentation  # noqa: F401
from kvision.models.profile import profile
from kvision.registry import ModelInfo, create, get_info, list_models

_builders = {info.builder.__name__: info.builder for info in _registry._REGISTRY.values()}
globals().update(_builders)

__all__ = ["ModelInfo", "create", "get_info", "list_models", "profile", *sorted(_builders)]
