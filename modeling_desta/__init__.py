"""DeSTA2.5-Audio model and configuration, registered with the transformers Auto classes on import."""

from .configuration_desta import DestaConfig
from .modeling_desta import DestaConnector, DestaForConditionalGeneration, DestaModel, DestaPreTrainedModel

__all__ = ["DestaConfig", "DestaConnector", "DestaForConditionalGeneration", "DestaModel", "DestaPreTrainedModel"]
