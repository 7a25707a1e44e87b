"""Graph nodes over qwenimage_core (thin adapters, no model math)."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
