"""Graph nodes over qwenimage_core: thin adapters between ComfyUI's sockets and the core (no model math here).

Every class name starts with "QwenImage", so none equals a ComfyUI built-in. `host` is the only module that
knows whether it runs inside ComfyUI or in our own server (`qwenimage serve`)."""
from . import conditioning, loaders, sampling, vae

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _m in (loaders, conditioning, sampling, vae):
    NODE_CLASS_MAPPINGS.update(_m.NODES)
    NODE_DISPLAY_NAME_MAPPINGS.update(_m.DISPLAY)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
