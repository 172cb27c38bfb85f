"""DeSTA2.5-Audio model and configuration, registered with the transformers Auto classes on import.

This folder and `processing/` are the remote-code set: exactly the files `save_pretrained` copies beside a
checkpoint. They import only torch, transformers, the standard library and their own siblings.
"""

from .configuration_desta import DestaConfig
from .connector_desta import DestaConnector
from .modeling_desta import DestaForConditionalGeneration, DestaModel, DestaPreTrainedModel

__all__ = ["DestaConfig", "DestaConnector", "DestaForConditionalGeneration", "DestaModel", "DestaPreTrainedModel"]
