"""The models: the registry (registry.py) and one module per family beside it, each registering its models
when it is imported.

The registry imports no family (the families import it), so this package imports them all: whatever imports
`imgclf.models.registry`, or any module here, runs this first and finds every model registered. Adding a
family is a module that calls `registry.register` and a line here.
"""

from __future__ import annotations

# The order of these imports is the order in which `imgclf models` lists the models.
# isort: off
from imgclf.models import torchvision_models, efficientnet_lite, small_nets, airnet, timm_models
# isort: on

__all__ = ["torchvision_models", "efficientnet_lite", "small_nets", "airnet", "timm_models"]
