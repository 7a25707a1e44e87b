"""Evaluation: image metrics (image_metrics.py: PSNR, SSIM)."""
