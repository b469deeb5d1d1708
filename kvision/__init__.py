"""kvision: classic computer-vision networks and tasks for Keras 3 on TensorFlow."""

__version__ = "0.1.0"

from kvision import models  # noqa: E402,F401
from kvision.models import create, list_models, profile  # noqa: E402,F401
