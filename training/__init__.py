"""Headless trainer over qwenimage_core."""
