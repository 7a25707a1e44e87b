"""Every curation op, by family; importing this package registers them all by name (op.py's REGISTRY).
Model-based families import their heavy libraries inside the op, so this import stays light."""
# one line per family module (each adds its own):
from . import safety  # noqa: F401  (C3: nsfw)
from . import watermark  # noqa: F401  (C3: watermark)
from . import faces  # noqa: F401  (C3: face_mosaic)
from . import alignment  # noqa: F401  (C3: clip_alignment)
from . import aesthetic  # noqa: F401  (C3: aesthetic)
