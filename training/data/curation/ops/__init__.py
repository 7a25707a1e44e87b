"""Every curation op, by family; importing this package registers them all by name (op.py's REGISTRY).
Model-based families import their heavy libraries inside the op, so this import stays light."""
# one line per family module (each adds its own):
from . import files  # noqa: F401  (C2: broken, file_size, resolution, exif_rotation)
from . import quality  # noqa: F401  (C2: clarity, luma, saturation, entropy, texture, compression)
from . import dedup  # noqa: F401  (C2: dedup)
from . import abnormal  # noqa: F401  (C2: qr_code)
from . import text  # noqa: F401  (C2: ocr_text)
from . import captions  # noqa: F401  (C2: caption_length, invalid_caption)
from . import category  # noqa: F401  (C4: category, best_per_category)
from . import safety  # noqa: F401  (C3: nsfw)
from . import watermark  # noqa: F401  (C3: watermark)
from . import faces  # noqa: F401  (C3: face_mosaic)
from . import alignment  # noqa: F401  (C3: clip_alignment)
from . import aesthetic  # noqa: F401  (C3: aesthetic)
