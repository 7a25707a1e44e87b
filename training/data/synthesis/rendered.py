"""What every renderer returns: the image, the text exactly as drawn (for the caption and for OCR read-back), the
laid-out blocks (for layout checks), and the facts a caption describes."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Rendered:
    image: Image.Image
    kind: str                     # pure | compositional | template
    lang: str                     # en | zh
    texts: list[str]              # each text as drawn, in reading order (a template has one per slot)
    blocks: list = field(default_factory=list)   # layout.Block per text, in canvas coordinates before any warp
    facts: dict = field(default_factory=dict)    # background, colours, medium, font look...: what captions say

    @property
    def text(self) -> str:
        return "\n".join(self.texts)
