"""Training data: dataset manifests and folders (dataset.py), aspect-ratio buckets (buckets.py), the latent and
text-state cache (cache.py), image crops for VAE training (vae_crops.py) and synthetic pictures for tests and the
demo model (synthetic.py, demo_shapes.py)."""
