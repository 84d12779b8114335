"""Weights in other projects' layouts (PyTorch DiT, diffusers VAE) <-> dit_jax parameters."""
