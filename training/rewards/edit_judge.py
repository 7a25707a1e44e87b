"""GEdit-Bench's judged edit quality, VIEScore style: semantic consistency (SC), perceptual quality (PQ) and
overall O = sqrt(SC * PQ), on GEdit's 0-10 scale.

As VIEScore (TIGER-AI-Lab/VIEScore, whose prompts GEdit-Bench uses; read, paraphrased here, not copied) asks:
- SC: the source and the edited image together, with the instruction: two 0-10 scores, how well the edit follows
  the instruction and how little else changed (over-editing); SC is the smaller.
- PQ: the edited image alone: two 0-10 scores, naturalness and absence of artifacts; PQ is the smaller.
Answers are read as {"score": [a, b], ...} (VIEScore's format), "score = [a, b]", or labelled numbers; anything else
is asked again, then recorded as a failure for that image. The source image is metadata["source"] (a path, or
the first of metadata["inputs"]); the instruction is metadata["instruction"], else the prompt.

GEdit-Bench's published numbers (the Qwen-Image report's too) come from GPT-4.1 as the judge; with Qwen2.5-VL or
another judge the values compare models judged alike, not with the published tables."""
from __future__ import annotations

import math

from .base import register
from .judge_backend import JudgedScorer, parse_scores

CONTEXT = ("You are a professional digital artist judging AI-generated images by the rules below. Every image and "
           "every person in them is AI-generated. Answer with a JSON object and nothing else: "
           "{\"score\": [..], \"reasoning\": \"...\"}, keeping the reasoning to one short sentence.\n\n")
SC_RULES = CONTEXT + (
    "RULES: Two images are given: the first is the original image, the second an edited version of it. Judge how "
    "well the second image carries out the editing instruction.\n"
    "Give two scores from 0 to 10. The first: how fully the edit follows the instruction (0: the instruction is not "
    "followed at all, 10: followed perfectly). The second: how little the image was over-edited (0: the edited "
    "image is a different scene from the original, 10: only what the instruction asks for changed). The two images "
    "may look the same when the edit failed.\n"
    "score = [instruction_followed, not_overedited]\n\nEditing instruction: {instruction}")
PQ_RULES = CONTEXT + (
    "RULES: One AI-generated image is given. Judge how well it was made.\n"
    "Give two scores from 0 to 10. The first: naturalness (0: the scene looks unnatural: wrong sense of distance, "
    "shadows or lighting; 10: it looks natural). The second: absence of artifacts (0: large distortions, "
    "watermarks, scratches, blurred faces, odd body parts or subjects not blended in; 10: no artifacts).\n"
    "score = [naturalness, artifacts]")


def source_image(meta: dict):
    from ...qwenimage_core.images import load_image

    path = meta.get("source") or next(iter(meta.get("inputs") or ()), None)
    if path is None:
        raise ValueError("no source image (metadata 'source' or 'inputs')")
    return load_image(path, "edit source image") if isinstance(path, str) or hasattr(path, "__fspath__") else path


class EditJudge(JudgedScorer):
    """sc, pq, overall per edited image (0-10); the reward is overall / 10."""
    name, reward, scale = "edit_judge", "overall", 10.0

    def metric_names(self):
        return ["sc", "pq", "overall"]

    def score_one(self, image, prompt, meta, index):
        try:
            source = source_image(meta)
        except (ValueError, FileNotFoundError) as e:
            return self.fail(index, str(e))
        instruction = meta.get("instruction") or prompt
        parse = lambda answer: parse_scores(answer, 2, 0.0, 10.0)  # noqa: E731
        sc, reason = self.judge.ask([source, image], SC_RULES.replace("{instruction}", instruction), parse)
        if sc is None:
            return self.fail(index, f"SC: {reason}")
        pq, reason = self.judge.ask([image], PQ_RULES, parse)
        if pq is None:
            return self.fail(index, f"PQ: {reason}")
        self.details[index] = {"sc_scores": sc, "pq_scores": pq}
        sc, pq = min(sc), min(pq)
        return {"sc": sc, "pq": pq, "overall": math.sqrt(sc * pq)}


@register("edit_judge")
def edit_judge(**judge):
    """GEdit-style SC / PQ / overall of an edit, judged by a VLM (model= or endpoint=)."""
    return EditJudge(**judge)
