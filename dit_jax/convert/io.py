"""Reading and writing flat {name: array} weight files: .safetensors, .npz and PyTorch .pt.

Everything comes back as numpy arrays in the file's own layout; converters rearrange them.
PyTorch is optional: a .pt file is read with torch when it is installed (weights only, no
pickled code), otherwise the error says how to make a .safetensors or .npz instead.
"""
from pathlib import Path

import numpy as np

FORMATS = (".safetensors", ".npz", ".pt", ".pth", ".bin")


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
  """The flat {name: array} in a weight file, by its extension (see FORMATS)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file {path} not found")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    from safetensors.numpy import load_file
    return dict(load_file(str(path)))
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      return {name: archive[name] for name in archive.files}
  if suffix in (".pt", ".pth", ".bin"):
    return _load_torch(path)
  raise ValueError(f"{path}: unknown weight format {suffix!r}; use one of {FORMATS}")


def _load_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(
        f"reading {path} needs PyTorch, which is not installed: `pip install torch`, or convert "
        "it once elsewhere to .safetensors or .npz (numpy arrays keyed by state-dict name)"
    ) from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("ema", "model"):  # training checkpoints wrap the state dicts: prefer the EMA
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
      break
  return {name: tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16
          else tensor.detach().numpy() for name, tensor in state.items()}


def save_tensors(path: str | Path, tensors: dict[str, np.ndarray]):
  """Writes a flat {name: array} as .safetensors or .npz (by extension)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {name: np.ascontiguousarray(np.asarray(value)) for name, value in tensors.items()}
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    from safetensors.numpy import save_file
    save_file(arrays, str(path))
  elif suffix == ".npz":
    np.savez(path, **arrays)
  else:
    raise ValueError(f"{path}: can only write .safetensors or .npz, got {suffix!r}")
