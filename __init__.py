"""Qwen-Image for ComfyUI: the node pack entry. ComfyUI imports this folder under a mangled name, so everything
below is imported relatively; the model library lives in qwenimage_core/ and knows nothing of nodes."""

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

if __name__ == "qwenimage":
    # Installed as the `qwenimage` package (the command line, the trainer): the node pack (torch and every node)
    # loads when its mappings are asked for, not on `qwenimage --help` or `import qwenimage.training...`.
    def __getattr__(name):
        if name in __all__:
            from . import nodes

            return getattr(nodes, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
else:  # ComfyUI's load: the pack, now
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
