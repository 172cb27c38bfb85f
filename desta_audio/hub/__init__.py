"""Model cards, publishing on the Hub, and conversion of the authors' release format."""

from .card import render_model_card, write_model_card
from .convert import ConversionError, convert
from .publishing import PublishError, check_folder, publish, save_for_hub, verify_loads

__all__ = [
    "ConversionError",
    "PublishError",
    "check_folder",
    "convert",
    "publish",
    "render_model_card",
    "save_for_hub",
    "verify_loads",
    "write_model_card",
]
