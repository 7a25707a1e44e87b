"""Qwen-Image for ComfyUI: the node pack entry. ComfyUI imports this folder under a mangled name, so everything
below is imported relatively; the model library lives in qwenimage_core/ and knows nothing of nodes."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
