"""Caption ops of the report's third stage: token length (in the text encoder's own tokenizer) and invalid captions,
the refusals and apologies a captioning model writes instead of a caption ("Sorry, I cannot provide a caption...")."""
from __future__ import annotations

import functools
import json
import os
import re
import unicodedata

from ..... import qwenimage_core   # the package only (its modules load on use): for the tokenizer's folder
from ..op import Item, Op, OpError, register

# Qwen-Image's prompt budget: qwenimage_core.text_encoder.TOKENIZER_MAX_LENGTH (not imported: that module loads
# torch, and the ops package must stay light to import)
MAX_PROMPT_TOKENS = 1024


# The tokenizer folder shipped in the package: qwenimage_core.text_encoder.bundled_tokenizer_dir() (a test checks
# they agree), named here because importing that module would load torch and transformers.
BUNDLED_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(qwenimage_core.__file__)), "qwen25_tokenizer")
# Qwen2's pre-tokenizer split, as transformers builds its fast tokenizer from vocab.json + merges.txt
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


@functools.lru_cache(maxsize=2)
def tokenizer(path: str | None = None):
    """The Qwen2.5 tokenizer shipped in the package (or the one in folder `path`), loaded once per process, as a
    `tokenizers.Tokenizer`: the same ids as the text encoder's transformers tokenizer (which wraps this one), built
    the way transformers' Qwen2 converter builds it, in ~1 s instead of ~6 s of importing transformers and torch
    and converting. `tokenizer().encode(text, add_special_tokens=False).ids` counts a caption."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

    folder = path or BUNDLED_TOKENIZER
    try:
        if os.path.isfile(os.path.join(folder, "tokenizer.json")):
            return Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                                             unk_token=None, fuse_unk=False, byte_fallback=False))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as fh:
            added = json.load(fh).get("added_tokens_decoder", {})
    except Exception as e:   # a folder without the files, a malformed vocabulary
        raise OpError(f"op 'caption_length': tokenizer {folder}: cannot be loaded ({type(e).__name__}: {e})") from None
    specs = [added[k] for k in sorted(added, key=int)]
    tokens = [AddedToken(t["content"], single_word=t.get("single_word", False), lstrip=t.get("lstrip", False),
                         rstrip=t.get("rstrip", False), normalized=t.get("normalized", False),
                         special=t.get("special", False)) for t in specs]
    tok.add_special_tokens([t for t in tokens if t.special])
    tok.add_tokens([t for t in tokens if not t.special])
    return tok


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
        n = len(tokenizer(self.tokenizer_path).encode(text, add_special_tokens=False).ids) if text else 0
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
