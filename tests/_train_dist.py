"""Run one training from a JSON config and write the trained parameters (used by the 2-process test, which runs
it under `accelerate launch`)."""
import json
import sys

import torch
from safetensors.torch import save_file

from qwenimage.training.config import load_config
from qwenimage.training.trainer import Trainer

if __name__ == "__main__":
    torch.set_num_threads(1)
    with open(sys.argv[1], encoding="utf-8") as fh:
        cfg = load_config(json.load(fh))
    t = Trainer(cfg)
    t.run()
    print(f"{t.acc.distributed_type} processes={t.acc.num_processes}", flush=True)
    if t.acc.is_main_process:
        save_file({k: v.detach().contiguous().cpu() for k, v in t.unwrapped.state_dict().items()}, sys.argv[2])
