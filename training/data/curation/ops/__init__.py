"""Every curation op, by family; importing this package registers them all by name (op.py's REGISTRY).
Model-based families import their heavy libraries inside the op, so this import stays light."""
# one line per family module (each adds its own):
