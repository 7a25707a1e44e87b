"""Data curation: the report's cleaning stages as ops (a statistic, then a threshold), pipelines as config, engines
that run them on all cores or on Ray, and a report a person can tune thresholds from. See op.py for the op model."""
