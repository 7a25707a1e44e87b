"""A vision-language model as the judge: Qwen2.5-VL looks at the image and the prompt, answers "Score: N", and the
reward is N / max_score (Flow-GRPO's QwenVL scorer asks for 1-5 and divides by 5).

Loaded through transformers (model and tokenizer from a folder or the hub, clip.load_pretrained); the image
inputs are built with the core's PIL image processor, so no torchvision is needed. An answer without a score in
range is asked again with sampling (`retries` times, each from its own seed, leaving the caller's RNG alone);
still none -> an error quoting the last answer."""
from __future__ import annotations

import inspect
import re

from .base import register
from .clip import load_pretrained, torch_dtype

DEFAULT_QUESTION = (
    "This image was generated from the prompt below. Judge how faithfully it shows everything the prompt asks "
    "for (objects, counts, colours, layout, any text written exactly), and its visual quality. Give one integer "
    "from 1 (poor) to {max_score} (excellent). Answer only in the form \"Score: N\".\nPrompt: {prompt}")
# Qwen2.5-VL's chat format with one image in the user turn.
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>{image}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
IMAGE_PAD = "<|image_pad|>"
_SCORE = re.compile(r"score\W{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE)  # "Score: 4", "**Score**: 4", "score 4"
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*\.?\s*")


def parse_score(answer: str, max_score: float, min_score: float = 1.0) -> float | None:
    """The N of "Score: N" (or an answer that is only a number), if within [min_score, max_score]; else None."""
    m = _SCORE.search(answer) or _NUMBER.fullmatch(answer)
    if m is None:
        return None
    value = float(m.group(1))
    return value if min_score <= value <= max_score else None


class QwenVLChat:
    """Qwen2.5-VL through transformers, asked in chats of one user turn: images (each between its vision tokens),
    then a question. Shared by the judges and the data annotator. Loaded from a hub name or a folder (tokenizer
    beside it, or `tokenizer`); the vision inputs come from the core's PIL image processor, so no torchvision.
    min/max_pixels bound each image for the vision tower (Qwen2.5-VL's 28 px units)."""

    def __init__(self, model: str = "Qwen/Qwen2.5-VL-7B-Instruct", min_pixels: int = 256 * 28 * 28,
                 max_pixels: int = 768 * 28 * 28, device: str = "cpu", dtype: str = "bfloat16",
                 offline: bool = False, tokenizer: str | None = None, what: str = "Qwen2.5-VL judge"):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from ...qwenimage_core.text_encoder import QWEN25_VL_IMAGE_PROCESSOR_CONFIG, image_processor_class

        self.tokenizer = load_pretrained(AutoTokenizer, tokenizer or model, f"{what} tokenizer", offline)
        self.tokenizer.padding_side = "left"   # batched generation: new tokens start at one column for every row
        self.model = load_pretrained(Qwen2_5_VLForConditionalGeneration, model, f"{what} model", offline,
                                     dtype=torch_dtype(dtype)).to(device).eval()
        self.image_processor = image_processor_class().from_dict({
            **QWEN25_VL_IMAGE_PROCESSOR_CONFIG, "min_pixels": min_pixels, "max_pixels": max_pixels,
            "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}})
        self.device = device
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        # transformers 5 computes Qwen2.5-VL's multimodal RoPE only when told which tokens are image tokens.
        self.pass_token_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters

    def chats(self, images_per_chat, questions) -> dict:
        """Model inputs for a left-padded batch of chats: chat i shows images_per_chat[i] in order (edit judging:
        the source, then the edited image), then asks questions[i]."""
        import torch

        flat = [im.convert("RGB") for ims in images_per_chat for im in ims]
        vision = self.image_processor(images=flat, return_tensors="pt")
        grid = torch.as_tensor(vision["image_grid_thw"])
        pads = [IMAGE_PAD * int(g.prod() // self.image_processor.merge_size ** 2) for g in grid]
        texts, at = [], 0
        for ims, question in zip(images_per_chat, questions):
            texts.append(CHAT.format(image="<|vision_end|><|vision_start|>".join(pads[at:at + len(ims)]),
                                     question=question))
            at += len(ims)
        tok = self.tokenizer(texts, return_tensors="pt", padding=True)
        inputs = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                  "pixel_values": torch.as_tensor(vision["pixel_values"]).to(self.model.dtype),
                  "image_grid_thw": grid}
        if self.pass_token_types:
            inputs["mm_token_type_ids"] = (tok["input_ids"] == self.image_token_id).long()
        return {k: v.to(self.device) for k, v in inputs.items()}

    def answers(self, inputs: dict, attempt: int, max_new_tokens: int) -> list[str]:
        """One answer per chat. Greedy first; retry `attempt` samples from seed `attempt` in a forked RNG (the
        caller's stream, e.g. training's, untouched)."""
        import torch

        devices = [torch.device(self.device).index or 0] if torch.device(self.device).type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            sample = attempt > 0
            if sample:
                torch.manual_seed(attempt)
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=sample,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      **({"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}))
        new = out[:, inputs["input_ids"].shape[1]:]
        return [a.strip() for a in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


class VLMJudge(QwenVLChat):
    """One judged answer per image (greedy, then sampled retries). `question` is a str.format template: {prompt}
    and {max_score} are filled in, other braces must be doubled. Fewer pixels: faster and blurrier judging."""

    def __init__(self, model: str = "Qwen/Qwen2.5-VL-7B-Instruct", question: str = DEFAULT_QUESTION,
                 max_score: int = 5, min_score: int = 1, retries: int = 2, max_new_tokens: int = 16,
                 min_pixels: int = 256 * 28 * 28, max_pixels: int = 768 * 28 * 28, device: str = "cpu",
                 dtype: str = "bfloat16", offline: bool = False):
        if "{prompt}" not in question:
            raise ValueError("vlm_judge: the question must contain {prompt}")
        super().__init__(model, min_pixels, max_pixels, device, dtype, offline)
        self.question, self.max_score, self.min_score = question, float(max_score), float(min_score)
        self.retries, self.max_new_tokens = int(retries), int(max_new_tokens)

    def __call__(self, images, prompts, metadata):
        return [self.judge(im, p) for im, p in zip(images, prompts)]

    def judge(self, image, prompt: str) -> float:
        inputs = self.chats([[image]], [self.question.format(prompt=prompt, max_score=int(self.max_score))])
        answers = []
        for attempt in range(self.retries + 1):
            answers.append(self.answer(inputs, attempt))
            value = parse_score(answers[-1], self.max_score, self.min_score)
            if value is not None:
                return value / self.max_score
        raise ValueError(f"the judge gave no score from {self.min_score:g} to {self.max_score:g} in "
                         f"{len(answers)} answers for prompt {prompt[:60]!r}; last answer: {answers[-1][:200]!r}")

    def answer(self, inputs: dict, attempt: int) -> str:
        return self.answers(inputs, attempt, self.max_new_tokens)[0]


@register("vlm_judge")
def vlm_judge(**options):
    """Qwen2.5-VL's score for each image against its prompt, in (0, 1] (options: see VLMJudge)."""
    return VLMJudge(**options)
