"""Official model folders on the Hugging Face hub, by short name, and fetching one to disk."""
from __future__ import annotations

import os

MODELS = {
    "qwen-image": "Qwen/Qwen-Image",
    "qwen-image-2512": "Qwen/Qwen-Image-2512",
    "qwen-image-edit": "Qwen/Qwen-Image-Edit",
    "qwen-image-edit-2509": "Qwen/Qwen-Image-Edit-2509",
    "qwen-image-edit-2511": "Qwen/Qwen-Image-Edit-2511",
    "qwen-image-layered": "Qwen/Qwen-Image-Layered",
}
# What a pipeline needs; the hub repos also carry READMEs and sample images that we skip.
PATTERNS = ["model_index.json", "transformer/*", "text_encoder/*", "vae/*", "tokenizer/*", "processor/*",
            "scheduler/*"]


class DownloadError(RuntimeError):
    """The hub could not be reached or refused the request; the message says which repo and why."""


def repo_id(name: str) -> str:
    """A short name (see MODELS) or an explicit 'owner/repo'."""
    if name in MODELS:
        return MODELS[name]
    if name.count("/") == 1 and all(name.split("/")):
        return name
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)} or a hub id like 'Qwen/Qwen-Image'")


def download(name: str, dest: str | os.PathLike | None = None, revision: str | None = None) -> str:
    """Fetch the diffusers folder of `name` into `dest` (default: the hub cache) and return its path. The hub
    client downloads to temporary files and resumes, so an interrupted run leaves no half-written weights."""
    from huggingface_hub import snapshot_download

    repo = repo_id(name)
    try:
        return snapshot_download(repo, revision=revision, allow_patterns=PATTERNS,
                                 local_dir=os.fspath(dest) if dest is not None else None)
    except Exception as e:  # offline, DNS, 401/404, disk full: all reach the user as one clear line
        raise DownloadError(f"could not download {repo} from the Hugging Face hub: {type(e).__name__}: {e}. "
                            "Check the network (HF_HUB_OFFLINE must be unset) and the name; gated repos need "
                            "`hf auth login`.") from e
