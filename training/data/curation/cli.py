"""`qwenimage data curate INPUT... --out DIR`: run a curation pipeline (the report's seven stages by default) over
folders, JSONL manifests and webdataset tars; print the funnel and where the report is."""
from __future__ import annotations

import os
import sys


def cmd_curate(a) -> int:
    from .engine import CurationError, curate
    from .pipeline import PipelineError, load_pipeline
    from .sources import SourceError

    try:
        pipeline = load_pipeline(a.pipeline, a.set or (), a.skip or ())
        totals = curate(a.inputs, a.out, pipeline, workers=a.workers, ray=a.ray, shard_size=a.shard_size,
                        progress=not a.no_progress)
    except (PipelineError, CurationError, SourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:   # ray (or a model op's library) not installed: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_funnel(totals))
    print(f"kept {totals['kept']} of {totals['records']} -> {os.path.join(a.out, 'manifest.jsonl')}")
    print(f"report: {os.path.join(a.out, 'report.html')}  (dropped: dropped.jsonl, counts: counts.json)")
    return 0


def format_funnel(totals: dict) -> str:
    """The funnel as a text table: per stage and op, in -> kept, and the top reasons."""
    def why(reasons):
        return ", ".join(f"{k} {v}" for k, v in list(reasons.items())[:3])

    src = totals["source"]
    lines = [f"{'stage/op':<24}{'in':>8}{'kept':>8}{'dropped':>9}  why", f"{'source':<24}{src['in']:>8}"
             f"{src['kept']:>8}{src['dropped']:>9}  {why(src['reasons'])}"]
    for st in totals["stages"]:
        lines.append(f"{st['name']:<24}{st['in']:>8}{st['kept']:>8}{st['dropped']:>9}")
        lines += [f"  {op['op']:<22}{op['in']:>8}{op['kept']:>8}{op['dropped']:>9}  {why(op['reasons'])}"
                  for op in st["ops"]]
    return "\n".join(lines)


def register(data) -> None:
    """Add `curate` to the `qwenimage data` subcommands."""
    from ....qwenimage_core.cli_args import positive_int

    c = data.add_parser("curate", help="filter images through a curation pipeline (the report's 7 stages by default)")
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image folders, JSONL manifests, webdataset .tar files, single image files")
    c.add_argument("--out", required=True, help="output folder: manifest.jsonl, dropped.jsonl, counts.json, "
                                               "report.html, shards/ (a rerun resumes)")
    c.add_argument("--pipeline", default="report", help="a preset name (report) or a pipeline TOML (default report)")
    c.add_argument("--workers", type=positive_int, default=None, metavar="N", help="processes (default: every core)")
    c.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run the shards on Ray: a local one, or the cluster at ADDRESS")
    c.add_argument("--shard-size", type=positive_int, default=None, metavar="N",
                   help="records per shard (default: the pipeline's shard_size, 256, or less so that every worker "
                        "gets several shards)")
    c.add_argument("--set", nargs="*", metavar="OP.KEY=VALUE",
                   help="override op options, e.g. luma.keep.luma=[0.1,0.9] s5.clarity.keep.clarity=[4,inf] "
                        "nsfw.model=/path")
    c.add_argument("--skip", nargs="*", metavar="OP", help="leave out ops or stages (OP, STAGE.OP, STAGE), e.g. "
                                                           "models you have no weights for")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(fn=cmd_curate)
