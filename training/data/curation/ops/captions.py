"""Caption ops of the report's third stage: token length (in the text encoder's own tokenizer) and invalid captions,
the refusals and apologies a captioning model writes instead of a caption ("Sorry, I cannot provide a caption...")."""
from __future__ import annotations

import functools
import re
import unicodedata

from ..op import Item, Op, OpError, register

# Qwen-Image's prompt budget: qwenimage_core.text_encoder.TOKENIZER_MAX_LENGTH (not imported: that module loads
# torch, and the ops package must stay light to import)
MAX_PROMPT_TOKENS = 1024


@functools.lru_cache(maxsize=2)
def tokenizer(path: str | None = None):
    """The Qwen2.5 tokenizer shipped in the package (or the one in `path`), loaded once per process (~1 s)."""
    from .....qwenimage_core.text_encoder import bundled_tokenizer_dir, load_tokenizer
    return load_tokenizer(path or bundled_tokenizer_dir())


@register("caption_length")
class CaptionLength(Op):
    """caption_tokens: the caption's length in Qwen2.5 tokens, as the text encoder counts them (no template, no
    special tokens; 0 without a caption). English runs ~1.3 tokens a word, Chinese ~1 per 1-2 characters; the
    report's structured captions are 50..300. The default keeps 1..1024: an empty caption teaches nothing, and the
    text encoder drops what passes its 1024-token budget. Option tokenizer: another tokenizer folder."""

    stats = ("caption_tokens",)
    default_keep = {"caption_tokens": (1.0, float(MAX_PROMPT_TOKENS))}

    def __init__(self, tokenizer: str | None = None, **kw):
        super().__init__(**kw)
        self.tokenizer_path = tokenizer

    def compute(self, item: Item) -> dict:
        text = item.caption or ""
        n = len(tokenizer(self.tokenizer_path)(text, add_special_tokens=False)["input_ids"]) if text else 0
        return {"caption_tokens": n}


# Lower case, after NFKC and with quoted text removed (a caption quoting a sign that says "I can't stop" is fine).
DEFAULT_INVALID_PATTERNS = (
    r"\b(i'?m|i am) sorry\b", r"^\W*sorry\b", r"\bi apologi[sz]e\b",
    r"\bi( cannot| can'?t| can not| am unable to|'?m unable to| am not able to|'?m not able to| won'?t be able to)"
    r" (provide|describe|caption|help|assist|generate|identify|see|view|process|comply)",
    r"\bunable to (provide|describe|caption|generate|process|view) (a |the |an )?(caption|description|image)",
    r"\bas an ai\b", r"\bas a(n)? (large )?language model\b", r"\bi'?m an ai\b",
    r"抱歉", r"对不起", r"无法(提供|描述|识别|生成|查看|处理|协助)", r"我(不能|无法|没办法)",
    r"作为(一个)?(ai|人工智能|语言模型)",
)
_QUOTED = re.compile(r'"[^"]*"|“[^”]*”|「[^」]*」|『[^』]*』|‘[^’]*’')


@register("invalid_caption")
class InvalidCaption(Op):
    """caption_invalid: True when the caption matches one of the patterns (regular expressions, searched in the
    lower-cased, NFKC-normalized caption with its quoted text removed); the drop reason names the pattern (also kept
    as invalid_caption_pattern). Options: patterns (replace the default list: English and Chinese refusals and
    apologies), extra_patterns (add to it). A missing caption is not invalid (caption_length judges that)."""

    stats = ("caption_invalid",)
    default_drop_if = {"caption_invalid": True}

    def __init__(self, patterns=None, extra_patterns=(), **kw):
        super().__init__(**kw)
        self.patterns = []
        for p in [*(DEFAULT_INVALID_PATTERNS if patterns is None else patterns), *extra_patterns]:
            try:
                self.patterns.append(re.compile(p))
            except (re.error, TypeError) as e:
                raise OpError(f"op 'invalid_caption': pattern {p!r} is not a regular expression ({e})") from None

    def match(self, caption: str | None) -> str | None:
        """The first pattern the caption matches, or None."""
        if not caption:
            return None
        text = _QUOTED.sub(" ", unicodedata.normalize("NFKC", caption)).replace("’", "'").lower()
        return next((p.pattern for p in self.patterns if p.search(text)), None)

    def compute(self, item: Item) -> dict:
        pattern = self.match(item.caption)
        return {"caption_invalid": pattern is not None, "invalid_caption_pattern": pattern}

    def decide(self, stats):
        reason = super().decide(stats)
        if reason and stats.get("caption_invalid") and stats.get("invalid_caption_pattern"):
            reason += f" (matches {stats['invalid_caption_pattern']!r})"
        return reason
