"""What every benchmark prints about where it ran."""
import os
import platform
import sys

import torch


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "models")


def add_demo_model_args(p) -> None:
    """--model, --text-encoder, --vae, defaulting to the shipped demo model's three files."""
    p.add_argument("--model", default=os.path.join(DEMO, "diffusion_models", "qwen_image_demo.safetensors"))
    p.add_argument("--text-encoder", default=os.path.join(DEMO, "text_encoders",
                                                          "qwen_image_demo_text_encoder.safetensors"))
    p.add_argument("--vae", default=os.path.join(DEMO, "vae", "qwen_image_demo_vae.safetensors"))
