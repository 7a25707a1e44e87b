"""One judged prompt-following score per image in [0, 1] (OneIG-style prompts without question lists): the VLM
judge rates from 0 to 10 how faithfully the image shows what the prompt asks (objects, attributes, counts,
relations, style, any text), and the score is that rating / 10. Answers as "Score: N", {"score": N} or a bare number
are accepted; anything else is asked again, then recorded as a failure for that image.

Where a suite has question lists (OneIG's and DPG's), vlm_questions scores them one by one, as those benchmarks
do; this single rating is the cheap stand-in (one judge call per image) and its numbers are not the benchmarks'."""
from __future__ import annotations

from .base import register
from .judge_backend import JudgedScorer, parse_scores

QUESTION = (
    "This image was generated from the prompt below. Rate from 0 to 10 how faithfully it shows everything the "
    "prompt asks for: objects, their attributes and counts, their positions and relations, the style, and any text "
    "written exactly. 0: nothing of the prompt, 10: all of it. Answer only in the form \"Score: N\".\n"
    "Prompt: {prompt}")


class PromptFollowing(JudgedScorer):
    name, reward = "prompt_following", "prompt_following"

    def __init__(self, question: str = QUESTION, **judge):
        if "{prompt}" not in question:
            raise ValueError("prompt_following: the question must contain {prompt}")
        super().__init__(**judge)
        self.question = question

    def metric_names(self):
        return ["prompt_following"]

    def score_one(self, image, prompt, meta, index):
        value, reason = self.judge.ask([image], self.question.replace("{prompt}", prompt),
                                       lambda answer: parse_scores(answer, 1, 0.0, 10.0))
        if value is None:
            return self.fail(index, reason)
        return {"prompt_following": value[0] / 10.0}


@register("prompt_following")
def prompt_following(**options):
    """A VLM judge's 0-10 rating of how well each image follows its prompt, / 10 (model= or endpoint=)."""
    return PromptFollowing(**options)
