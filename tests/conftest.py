import os
import sys

import pytest
import torch

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
REFERENCE = os.path.normpath(os.path.join(SHARED, "reference"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def reference_dir():
    if not os.path.isdir(REFERENCE):
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE



@pytest.fixture(scope="session")
def tokenizer():
    """The real Qwen2.5 tokenizer from shared/reference (true token counts for the text-encoder tests)."""
    from _tiny import TOKENIZER_DIR

    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip(f"Qwen2.5 tokenizer not found at {TOKENIZER_DIR}")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
