"""Precomputed text embeddings of a large frozen encoder (T5 / CLIP features the user
computed elsewhere): the `text`, `text_mask` and `pooled` condition of a model with
text_source='embeddings' (MM-DiT presets) or a U-Net with text_dim > 0.
"""
import numpy as np

from dit_jax import paths
from dit_jax.errors import InputError, MissingFileError


def load_text_embeddings(path, pooled_dim: int | None = None) -> dict[str, np.ndarray]:
  """Reads precomputed text features: an .npz with 'text' (N, S, Dc), 'text_mask' (N, S) and
  optionally 'pooled' (N, Dp). Returns them as a dict of arrays whose rows are the cond of
  example i (`{k: v[i]}`), ready for a model with text_source='embeddings'."""
  try:
    file = paths.open_read(path)  # local or gs://
  except FileNotFoundError:
    raise MissingFileError(f"text embeddings {path} not found: compute them with your frozen "
                           "encoder and save np.savez(path, text=..., text_mask=..., pooled=...)"
                           ) from None
  with file, np.load(file) as f:
    out = {k: f[k] for k in ("text", "text_mask", "pooled") if k in f}
  if "text" not in out or out["text"].ndim != 3:
    raise InputError(f"{path}: needs 'text' of shape (N, S, Dc)")
  n, s, _ = out["text"].shape
  mask = out.get("text_mask", np.ones((n, s), bool))
  if mask.shape != (n, s):
    raise InputError(f"{path}: 'text_mask' has shape {mask.shape}, expected {(n, s)}")
  out["text_mask"] = mask.astype(bool)
  if pooled_dim and ("pooled" not in out or out["pooled"].shape != (n, pooled_dim)):
    raise InputError(f"{path}: the model has pooled_dim={pooled_dim} and needs 'pooled' of "
                     f"shape {(n, pooled_dim)}; got {out.get('pooled', np.empty(0)).shape}")
  out["text"] = out["text"].astype(np.float32)
  return out
