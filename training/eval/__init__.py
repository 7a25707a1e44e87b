"""Evaluation (`qwenimage eval`): suites/ (benchmarks' published files -> EvalItems), generate.py (seeded, resumable,
multi-process images), run.py (generate -> score with the rewards registry -> results.jsonl; `evaluate` for the
trainer), report.py (metrics.json, results.csv, report.html), cli.py; metrics: image_metrics.py (PSNR, SSIM),
text_metrics.py."""
