"""Helpers shared by the tests."""
import torch


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: the parity measure the issues state."""
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
