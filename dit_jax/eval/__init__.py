"""Evaluation of generated images: the FID Inception network and what is computed from it."""
