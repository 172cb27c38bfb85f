"""Model cards, publishing on the Hub, and conversion of the authors' release format."""

from modeling_desta.release_desta import ReleaseFormatError

from .card import render_model_card, write_model_card
from .convert import convert
from .publishing import PublishError, check_folder, publish, save_for_hub, verify_loads

__all__ = [
    "ReleaseFormatError",
    "PublishError",
    "check_folder",
    "convert",
    "publish",
    "render_model_card",
    "save_for_hub",
    "verify_loads",
    "write_model_card",
]
