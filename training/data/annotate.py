"""Structured annotation with Qwen2.5-VL, as the report's annotator (Fig. 12): one answer per image, a JSON object
with a caption and quality fields, turned into the Raw / Recaption / Fused caption splits the trainer reads.

The model answers {"Caption", "Image Type", "Image Style", "Watermark List", "Abnormal Element"} (the report's
keys; the caption's four rules as Fig. 12, the examples of types and styles ours) plus "Visible Text" (ours: the
taxonomy and language split read it; a missing one falls back to the caption's quoted spans).
An answer is parsed (the JSON object found in it, code fences and chatter around it ignored), its fields typed;
a malformed one is asked again with sampling (`retries` times, seeds 1, 2, ... in a forked RNG, as vlm_judge),
then recorded as a failure with the last answer. Images go through in batches (left padding, so every row's new
tokens start at the same column); finished rows are appended to the output one batch at a time, so a killed run
loses at most a batch and a rerun skips what is done.

Caption splits (S3 of the report): `caption_raw` is the source caption (alt text: names, places, facts only the
web knew), `caption_recaption` the annotator's, `caption_fused` both (see `fuse_rule`, or a fuse prompt to the same
model). Each row is assigned one split, deterministically from its key and the configured ratios, and `caption`
becomes that split's text."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field

from ..eval.text_metrics import quoted_text
from ..rewards.vlm_judge import QwenVLChat
from .curation.rows import read_rows, relative_paths

ANNOTATOR_PROMPT = """# Image Annotator
You are a professional image annotator. Please complete the following tasks based on the input image.
## Step 1: Create Image Caption
1. Write the caption using natural, descriptive language without structured formats or rich text.
2. Enrich caption details by including:
 - Object attributes, such as quantity, color, shape, size, material, state, position, actions, and so on
 - Vision relations between objects, such as spatial, functional, possessive, attachment, action, comparative and \
causal relations
 - Environmental details, such as weather, lighting, colors, textures, atmosphere, and so on
3. Identify the text clearly visible in the image, verbatim, without translation or explanation, and highlight it \
in the caption with quotation marks.
4. Maintain authenticity and accuracy: avoid generalizations; describe all visible information in the image, and \
do not add information not explicitly shown in the image.
## Step 2: Image Quality Assessment
- Image Type: identify the image's type from its source and use (e.g. photograph, poster, document, screenshot, \
slide, illustration, painting, comic, product image, chart, certificate).
- Image Style: identify the image's overall style (e.g. realistic, cartoon, anime, oil painting, watercolor, \
sketch, 3D render, minimalist, vintage).
- Watermark Detection: list every watermark in the image (its text, or a short description and position); an \
empty list if there is none.
- Abnormal Element: answer "yes" if the image contains a QR code, a barcode or a mosaic (pixelated) area, \
otherwise "no".
- Visible Text: list every piece of text visible in the image, verbatim, in reading order; an empty list if there \
is none.
## Output
Answer with one JSON object and nothing else:
{"Caption": "...", "Image Type": "...", "Image Style": "...", "Watermark List": ["..."], \
"Abnormal Element": "yes/no", "Visible Text": ["..."]}"""

FUSE_PROMPT = """# Caption Fusion
Below are two captions of this image. The raw caption comes from the web and may hold facts (names, places, \
dates, titles) that cannot be seen; the detailed caption describes what is visible.
Raw caption: {raw}
Detailed caption: {recaption}
Write one caption that keeps every detail of the detailed caption and adds the raw caption's facts where they fit \
and do not contradict the image. Keep quoted text verbatim. Answer with the caption only."""

SPLITS = ("raw", "recaption", "fused")
DEFAULT_RATIOS = {"raw": 0.2, "recaption": 0.4, "fused": 0.4}


# ------------------------------------------------------------------------------------------------ parsing

class MalformedAnswer(ValueError):
    """An answer with no JSON object of the annotator's fields; the message says what is wrong."""


@dataclass
class Annotation:
    caption: str
    image_type: str
    image_style: str
    watermark_list: list[str] = field(default_factory=list)
    abnormal_element: str = "no"              # "yes" | "no"
    visible_text: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_FIELDS = {"caption": "caption", "imagetype": "image_type", "type": "image_type", "imagestyle": "image_style",
           "style": "image_style", "watermarklist": "watermark_list", "watermarks": "watermark_list",
           "watermark": "watermark_list", "abnormalelement": "abnormal_element", "abnormal": "abnormal_element",
           "visibletext": "visible_text", "text": "visible_text"}
_NONE_WORDS = {"", "none", "no", "n/a", "na", "null", "nil", "无", "没有"}


def _json_object(answer: str) -> dict:
    """The first JSON object in `answer` (```json fences and text around it ignored), or MalformedAnswer."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", answer):
        try:
            obj, _ = decoder.raw_decode(answer, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise MalformedAnswer("no JSON object in the answer")


def _text_list(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [] if value.strip().lower() in _NONE_WORDS else [value.strip()]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v).strip() for v in value if str(v).strip().lower() not in _NONE_WORDS]
    raise MalformedAnswer(f"{name}: expected a list of strings, got {json.dumps(value, ensure_ascii=False)[:80]}")


def parse_annotation(answer: str) -> Annotation:
    """An answer -> Annotation, or MalformedAnswer naming the missing or mistyped field. Keys match loosely
    ("Image Type", "image_type", "imageType"); a missing Visible Text falls back to the caption's quoted spans."""
    obj = {_FIELDS.get(re.sub(r"[^a-z]", "", str(k).lower()), k): v for k, v in _json_object(answer).items()}
    for name in ("caption", "image_type", "image_style"):
        if not isinstance(obj.get(name), str) or not obj[name].strip():
            got = "missing" if name not in obj else f"got {json.dumps(obj[name], ensure_ascii=False)[:80]}"
            raise MalformedAnswer(f"{name}: expected a non-empty string, {got}")
    abnormal = obj.get("abnormal_element")
    if isinstance(abnormal, bool):
        abnormal = "yes" if abnormal else "no"
    if not isinstance(abnormal, str) or abnormal.strip().lower() not in ("yes", "no"):
        raise MalformedAnswer(f"abnormal_element: expected \"yes\" or \"no\", got {json.dumps(abnormal)[:40]}")
    caption = obj["caption"].strip()
    visible = (_text_list(obj["visible_text"], "visible_text") if "visible_text" in obj
               else quoted_text(caption))
    return Annotation(caption=caption, image_type=obj["image_type"].strip(), image_style=obj["image_style"].strip(),
                      watermark_list=_text_list(obj.get("watermark_list"), "watermark_list"),
                      abnormal_element=abnormal.strip().lower(), visible_text=visible)


# ------------------------------------------------------------------------------------------------ caption splits

_WORD = re.compile(r"[\u3400-\u9fff]|[^\W_]+", re.UNICODE)   # a Han character, or a run of letters/digits


def fuse_rule(raw: str | None, recaption: str) -> str:
    """The Fused caption by rule: the recaption, followed by the raw caption when the raw caption has words the
    recaption lacks (a name, a place, a date only the alt text knows); the recaption alone when it already says
    everything the raw caption does, or there is no raw caption. Han characters count one by one."""
    raw, recaption = (raw or "").strip(), recaption.strip()
    have = {w.lower() for w in _WORD.findall(recaption)}
    if not raw or all(w.lower() in have for w in _WORD.findall(raw)):
        return recaption
    if re.search(r"[\u3400-\u9fff]", recaption[-1:]) or recaption.endswith(("。", "！", "？")):
        return recaption + ("" if recaption.endswith(("。", "！", "？")) else "。") + raw
    return recaption + ("" if recaption.endswith((".", "!", "?")) else ".") + " " + raw


def parse_ratios(spec) -> dict[str, float]:
    """"raw=0.2,recaption=0.4,fused=0.4" (or a dict) -> normalised {split: share}; an unknown split or a bad
    number is an error naming it."""
    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"caption split ratios: {part!r} is not SPLIT=SHARE (e.g. raw=0.2,recaption=0.8)")
            try:
                items[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"caption split ratios: {part!r}: {value!r} is not a number") from None
        spec = items
    unknown = sorted(set(spec) - set(SPLITS))
    if unknown:
        raise ValueError(f"caption split ratios: unknown split(s) {unknown} (known: {', '.join(SPLITS)})")
    if any(not v >= 0 for v in spec.values()) or sum(spec.values()) <= 0:
        raise ValueError(f"caption split ratios must be non-negative with a positive sum, got {spec}")
    total = sum(spec.values())
    return {s: spec.get(s, 0.0) / total for s in SPLITS}


def choose_split(key: str, ratios: dict[str, float], available=SPLITS) -> str:
    """The row's split: a uniform number from sha256(key) placed in the cumulative ratios (so a row keeps its split
    across runs and machines). A split whose text is missing (no raw caption) gives way to the others by ratio."""
    live = {s: r for s, r in ratios.items() if s in available and r > 0} or {"recaption": 1.0}
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64 * sum(live.values())
    for s, r in live.items():
        u -= r
        if u < 0:
            return s
    return next(reversed(live))


def caption_splits(row: dict, ann: Annotation, key: str, ratios: dict[str, float], fused: str | None = None) -> dict:
    """The fields a row gains: caption_raw / caption_recaption / caption_fused / caption_split / caption."""
    raw = (row.get("caption_raw", row.get("caption")) or "").strip()
    texts = {"raw": raw, "recaption": ann.caption, "fused": fused or fuse_rule(raw, ann.caption)}
    split = choose_split(key, ratios, [s for s, t in texts.items() if t])
    return {"caption_raw": raw, "caption_recaption": texts["recaption"], "caption_fused": texts["fused"],
            "caption_split": split, "caption": texts[split]}


# ------------------------------------------------------------------------------------------------ the model

def read_image(path: str):
    """A manifest's image as RGB PIL, fully decoded (decompression bombs refused): a file or a tar member."""
    from .curation.op import decode
    from .curation.sources import read_bytes

    return decode(read_bytes(path))


class Annotator(QwenVLChat):
    """Qwen2.5-VL answering the annotator prompt for a batch of images (vlm_judge.QwenVLChat: loading, left-padded
    chats, sampled retries). `model` is a hub name or a folder (tokenizer beside it, or `tokenizer`)."""

    def __init__(self, model: str = "Qwen/Qwen2.5-VL-7B-Instruct", prompt: str = ANNOTATOR_PROMPT,
                 retries: int = 2, max_new_tokens: int = 1024, min_pixels: int = 256 * 28 * 28,
                 max_pixels: int = 1280 * 28 * 28, device: str = "cpu", dtype: str = "bfloat16",
                 offline: bool = False, fuse: str = "rule", fuse_prompt: str = FUSE_PROMPT, tokenizer=None):
        if fuse not in ("rule", "model"):
            raise ValueError(f"fuse must be 'rule' or 'model', not {fuse!r}")
        super().__init__(model, min_pixels, max_pixels, device, dtype, offline, tokenizer, "Qwen2.5-VL annotator")
        self.prompt, self.fuse, self.fuse_prompt = prompt, fuse, fuse_prompt
        self.retries, self.max_new_tokens = int(retries), int(max_new_tokens)

    def generate(self, images, questions, attempt: int) -> list[str]:
        """One answer per image, each asked its question. Greedy first; retry `attempt` samples from its seed."""
        return self.answers(self.chats([[im] for im in images], questions), attempt, self.max_new_tokens)

    def annotate(self, images) -> list[tuple[Annotation | None, str, str]]:
        """(annotation or None, last answer, error) per image: malformed answers asked again, only those."""
        results: list = [(None, "", "not asked")] * len(images)
        todo = list(range(len(images)))
        for attempt in range(self.retries + 1):
            answers = self.generate([images[i] for i in todo], [self.prompt] * len(todo), attempt)
            still = []
            for i, answer in zip(todo, answers):
                try:
                    results[i] = (parse_annotation(answer), answer, "")
                except MalformedAnswer as e:
                    results[i] = (None, answer, f"malformed answer after {attempt + 1} tries: {e}")
                    still.append(i)
            if not still:
                break
            todo = still
        return results

    def fuse_captions(self, images, raws: list[str], recaptions: list[str]) -> list[str | None]:
        """The fused captions by the fuse prompt (fuse="model") for rows with a raw caption; None elsewhere (the
        rule then)."""
        if self.fuse != "model":
            return [None] * len(images)
        ask = [i for i, r in enumerate(raws) if r]
        out: list = [None] * len(images)
        if ask:
            qs = [self.fuse_prompt.format(raw=raws[i], recaption=recaptions[i]) for i in ask]
            for i, answer in zip(ask, self.generate([images[i] for i in ask], qs, 0)):
                out[i] = answer or None
        return out


# ------------------------------------------------------------------------------------------------ the run

def failures_path(out: str) -> str:
    root, ext = os.path.splitext(out)
    return f"{root}.failures{ext or '.jsonl'}"


def _done_keys(path: str) -> set[str]:
    """Keys of the rows already written; a torn last line (a run killed mid-write) is cut off first."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as fh:
        data = fh.read()
    keep = data if data.endswith(b"\n") or not data else data[:data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(len(keep))
    keys = set()
    for n, line in enumerate(keep.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                keys.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: not a row this command wrote (no JSON with a key); "
                                 "give another --out or remove the file") from None
    return keys


def _append(path: str, rows: list[dict]) -> None:
    """All of a batch's rows in one write, flushed to disk: a kill leaves whole batches (and at most a torn line,
    cut off on resume)."""
    if rows:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


def _drop_keys(path: str, keys: set[str]) -> None:
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip() and json.loads(line).get("key") not in keys]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    os.replace(tmp, path)


def row_key(row: dict) -> str:
    return str(row.get("key") or row["image"])


def annotate_manifest(manifest: str, out: str, annotator, *, batch: int = 4, ratios=None, limit: int = 0,
                      redo_failures: bool = False, progress: bool = True) -> dict:
    """Annotate every row of `manifest` not yet in `out` (nor in its failures file, unless redo_failures), in
    batches; returns counts {"done", "annotated", "failed", "skipped_bad_rows"}."""
    ratios = parse_ratios(ratios or DEFAULT_RATIOS)
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    rows, problems = read_rows(manifest, out_dir)
    for p in problems:
        print(f"skipping {p}", file=sys.stderr)
    fail_path = failures_path(out)
    done = _done_keys(out) | (set() if redo_failures else _done_keys(fail_path))
    todo = [r for r in rows if row_key(r) not in done]
    already = len(rows) - len(todo)
    if limit:
        todo = todo[:limit]
    if redo_failures:   # the rows tried again leave the failures file; they come back if they fail again
        _drop_keys(fail_path, {row_key(r) for r in todo})
    counts = {"done": already, "annotated": 0, "failed": 0, "skipped_bad_rows": len(problems)}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="img", desc="annotate")
    for start in range(0, len(todo), max(1, batch)):
        chunk = todo[start:start + max(1, batch)]
        good, bad = _annotate_batch(annotator, chunk, ratios)
        good = [relative_paths(r, out_dir) for r in good]
        _append(out, good)
        _append(fail_path, bad)
        counts["annotated"] += len(good)
        counts["failed"] += len(bad)
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    return counts


def _annotate_batch(annotator, rows: list[dict], ratios) -> tuple[list[dict], list[dict]]:
    images, live, bad = [], [], []
    for row in rows:
        try:
            images.append(read_image(row["image"]))
            live.append(row)
        except Exception as e:  # PIL raises many types for broken files: all mean "unreadable"
            bad.append({"key": row_key(row), "image": row["image"],
                        "error": f"unreadable image: {type(e).__name__}: {e}", "answer": None})
    if not live:
        return [], bad
    results = _annotate_safely(annotator, images)
    ok = [(im, row, ann) for im, row, (ann, _, _) in zip(images, live, results) if ann is not None]
    raws = [(row.get("caption_raw", row.get("caption")) or "").strip() for _, row, _ in ok]
    fused = annotator.fuse_captions([im for im, _, _ in ok], raws, [a.caption for _, _, a in ok])
    good = []
    for (_, row, ann), f in zip(ok, fused):
        key = row_key(row)
        good.append({**row, "key": key, "annotation": ann.to_dict(), **caption_splits(row, ann, key, ratios, f)})
    for row, (ann, answer, error) in zip(live, results):
        if ann is None:
            bad.append({"key": row_key(row), "image": row["image"], "error": error, "answer": answer})
    return good, bad


def _annotate_safely(annotator, images) -> list:
    """annotator.annotate, but a batch that raises (an image the processor refuses: aspect ratio over 200) is done
    again one image at a time, so only the bad image fails, with the error as its reason."""
    try:
        return annotator.annotate(images)
    except Exception as e:
        if len(images) > 1:
            return [r for im in images for r in _annotate_safely(annotator, [im])]
        return [(None, None, f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}")]
