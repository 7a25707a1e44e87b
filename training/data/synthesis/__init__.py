"""Synthetic text rendering (the report's three kinds, in English and Chinese): pure paragraphs on clean
backgrounds, text on physical media composited into scenes, and slides / UI mockups from templates, with captions
that quote the text, sharded for the trainer. Files: fonts (character maps), corpus, layout (line breaking and
fitting), colors, pure, compositional, templates (+ templates/*.json), captions, quality (OCR read-back),
generate (config and the run), preview (contact sheet)."""
