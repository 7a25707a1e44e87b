"""Evaluation suites: each benchmark's published file read into EvalItems (base.py: the item, the registry and the
row errors; one file per benchmark family, each naming the file it reads and where to download it)."""
from . import chineseword, cvtg, dpg, gedit, geneval, imgedit, longtext, novel_view, oneig, prompts  # noqa: F401
from .base import SUITES, EvalItem, Loaded, Suite, SuiteFileError, get_suite, item_seed

ALL = SUITES
__all__ = ["SUITES", "EvalItem", "Loaded", "Suite", "SuiteFileError", "get_suite", "item_seed"]
