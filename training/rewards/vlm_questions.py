"""Prompt following as yes/no questions a VLM judge answers about the image (DPG-Bench, OneIG, GenEval as VQA).

Each item brings its questions in metadata["questions"] = [{"id", "question", "depends": [ids]}] (DPG-Bench's
proposition_id / question_natural_language / dependency columns, as the suite reads them). The score is DPG-Bench's
(ELLA's compute_dpg_bench.py, read): each question scores 1 for "yes"; then, in order, a question any of whose
parents (ids other than 0) scored 0 is set to 0 too ("is the cat black?" counts for nothing without a cat); the
image's question_score is the mean. The per-question answers are in `fn.details[i]`.

GenEval items (metadata["geneval"] = {"tag", "include": [{"class", "count", "color", "position": [relation,
index]}], "exclude": [{"class", "count"}]}) are turned into questions here, because GenEval's official scorer
(an mmdetection Mask2Former plus CLIP colour classification) is not installed with this package: object present /
at least N / exactly N (an include with its exclude at N+1), colour, relative position ("left of", "right of",
"above", "below"), each depending on the objects it names. GenEval counts an image as correct only when every
clause holds, so for these items question_score is 1.0 when every answer is yes, else 0.0. Numbers from this VQA
stand-in are not the official detector's: compare models with one another, not with published GenEval tables."""
from __future__ import annotations

from .base import register
from .judge_backend import JudgedScorer, parse_yes_no

ASK = "{question} Answer only yes or no."


def plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def geneval_questions(spec: dict) -> list[dict]:
    """GenEval's include/exclude clauses as yes/no questions with dependencies (ids 1.., 0 = none)."""
    include, exclude = list(spec.get("include", [])), list(spec.get("exclude", []))
    if not include:
        raise ValueError(f"geneval spec {spec!r} has no 'include' clauses")
    questions, present = [], {}
    excluded = {(e["class"], int(e["count"])) for e in exclude}
    for k, req in enumerate(include):
        cls, n = req["class"], int(req.get("count", 1))
        if n == 1 and (cls, 2) not in excluded:
            text = f"Is there {article(cls)} in the image?"
        elif (cls, n + 1) in excluded:
            text = f"Is there exactly one {cls} in the image?" if n == 1 else \
                f"Are there exactly {n} {plural(cls)} in the image?"
        else:
            text = f"Are there at least {n} {plural(cls)} in the image?"
        qid = len(questions) + 1
        questions.append({"id": qid, "question": text, "depends": [0]})
        present[k] = qid
        if "color" in req:
            text = f"Is the {cls} {req['color']}?" if n == 1 else f"Are the {plural(cls)} {req['color']}?"
            questions.append({"id": len(questions) + 1, "question": text, "depends": [qid]})
        if "position" in req:
            relation, other = req["position"]
            if other not in present:
                raise ValueError(f"geneval spec: clause {k} is placed relative to clause {other}, which does not come "
                                 "before it")
            other_cls = include[other]["class"]
            subject = f"Is the {cls}" if n == 1 else f"Are the {plural(cls)}"
            questions.append({"id": len(questions) + 1, "question": f"{subject} {relation} the {other_cls}?",
                              "depends": [qid, present[other]]})
    for e in exclude:
        if not any(e["class"] == r["class"] and int(e["count"]) == int(r.get("count", 1)) + 1 for r in include):
            questions.append({"id": len(questions) + 1, "depends": [0],
                              "question": f"Are there fewer than {int(e['count'])} {plural(e['class'])} in the image?"})
    return questions


def dependency_score(questions: list[dict], answers: dict) -> float:
    """DPG-Bench's rule: yes = 1; in order, a question with a parent (id != 0) at 0 is 0; the mean."""
    scores = {q["id"]: float(answers[q["id"]]) for q in questions}
    for q in questions:
        if any(scores.get(p, 1.0) == 0 for p in q.get("depends", []) if p not in (0, None, "0")):
            scores[q["id"]] = 0.0
    return sum(scores.values()) / len(scores)


class VLMQuestions(JudgedScorer):
    """question_score in [0, 1] per image from the judge's yes/no answers (options: judge_backend.Judge's)."""
    name, reward = "vlm_questions", "question_score"

    def metric_names(self):
        return ["question_score"]

    def score_one(self, image, prompt, meta, index):
        try:
            strict = "questions" not in meta and "geneval" in meta
            questions = geneval_questions(meta["geneval"]) if strict else list(meta.get("questions") or [])
        except (KeyError, TypeError, ValueError) as e:
            return self.fail(index, f"bad geneval spec: {e}")
        if not questions:
            return self.fail(index, "no questions for this image (metadata 'questions' or 'geneval')")
        answers, said = {}, []
        for q in questions:
            if "id" not in q or "question" not in q:
                return self.fail(index, f"question {q!r} needs 'id' and 'question'")
            value, reason = self.judge.ask([image], ASK.format(question=q["question"]), parse_yes_no)
            if value is None:
                self.details[index] = said
                return self.fail(index, f"question {q['id']!r} ({q['question'][:80]!r}): {reason}")
            answers[q["id"]] = value
            said.append({"id": q["id"], "question": q["question"], "answer": "yes" if value else "no"})
        self.details[index] = said
        score = float(all(answers.values())) if strict else dependency_score(questions, answers)
        return {"question_score": score}


@register("vlm_questions")
def vlm_questions(**judge):
    """Yes/no questions about each image, answered by a VLM judge (model= or endpoint=)."""
    return VLMQuestions(**judge)
