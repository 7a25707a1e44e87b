"""qwenimage_core: the Qwen-Image model library (MSRoPE MMDiT, VAE, text encoder, schedules, pipelines, I/O).

It knows nothing of nodes or training; both faces import from here."""
