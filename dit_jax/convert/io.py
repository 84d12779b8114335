"""Reading and writing flat {name: array} weight files: .safetensors, .npz and PyTorch .pt.

Everything comes back as numpy arrays in the file's own layout; converters rearrange them.
PyTorch is optional: a .pt file is read with torch when it is installed (weights only, no
pickled code), otherwise the error says how to make a .safetensors or .npz instead. Nothing
here ever unpickles: an .npz holding Python objects is refused. A file that is empty, damaged
or of another format gives a ValueError naming the file and what is wrong. `flat_paths` and
`refuse_mismatch` serve the converters, which map such files onto parameter trees. Files may
be local or in a bucket (gs://); there they are read whole and written in one upload.
"""
import pickle
import zipfile
import zlib

import jax
import safetensors.numpy
from safetensors import SafetensorError
import numpy as np

from dit_jax import paths, state_files
from dit_jax.errors import InputError, MissingFileError, MissingPackageError

FORMATS = (".safetensors", ".npz", ".pt", ".pth", ".bin")


def load_tensors(path) -> dict[str, np.ndarray]:
  """The flat {name: array} in a weight file, by its extension (see FORMATS)."""
  path = paths.as_path(path)
  with paths.remote_errors(path):
    if path.is_dir():
      raise InputError(f"weight file {path} is a directory: pass the file itself")
    if not path.is_file():
      raise MissingFileError(f"weight file {path} not found")
    size = path.stat().length
  suffix = path.suffix.lower()
  if size == 0:
    raise InputError(f"weight file {path} is empty (0 bytes): an interrupted download or copy? "
                     "Fetch or write it again")
  if suffix == ".safetensors":
    return _load_safetensors(path)
  if suffix == ".npz":
    return _load_npz(path)
  if suffix in (".pt", ".pth", ".bin"):
    return _load_torch(path)
  raise InputError(f"{path}: unknown weight format {suffix!r}; use one of {FORMATS}")


def _load_safetensors(path) -> dict[str, np.ndarray]:
  try:
    if paths.is_remote(path):
      return dict(safetensors.numpy.load(state_files.read_bytes(path)))
    return dict(safetensors.numpy.load_file(str(path)))
  except SafetensorError as e:
    raise InputError(f"{path} is not a readable .safetensors file ({e}): it is damaged, "
                     "truncated or of another format; write it again") from None


def _load_npz(path) -> dict[str, np.ndarray]:
  """The arrays of an .npz (a zip of .npy files); object arrays are refused, never unpickled."""
  with paths.open_read(path) as f:
    if not zipfile.is_zipfile(f):
      raise InputError(f"{path} is not an .npz file (a zip archive of .npy arrays, as np.savez "
                       "writes): it is damaged or of another format")
    f.seek(0)
    return _npz_arrays(path, f)


def _npz_arrays(path, file) -> dict[str, np.ndarray]:
  try:
    with zipfile.ZipFile(file) as archive:
      return {member.removesuffix(".npy"): _npy_member(path, archive, member)
              for member in archive.namelist()}
  except (zipfile.BadZipFile, EOFError, zlib.error) as e:
    raise InputError(f"{path}: damaged .npz archive ({e}); write it again") from None


def _npy_member(path, archive: zipfile.ZipFile, member: str) -> np.ndarray:
  with archive.open(member) as f:
    try:
      version = np.lib.format.read_magic(f)
    except ValueError:
      raise InputError(f"{path}: member {member!r} is not a .npy array; an .npz of weights "
                       "holds numeric arrays only") from None
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    dtype = read_header(f)[2]  # checked before any data is read
    if dtype.hasobject:
      raise InputError(f"{path}: array {member.removesuffix('.npy')!r} holds Python objects "
                       f"(dtype {dtype}), which dit-jax never loads (unpickling can run code); "
                       "save the weights as numeric arrays, e.g. np.asarray(v, np.float32)")
    f.seek(0)
    return np.lib.format.read_array(f, allow_pickle=False)


def _load_torch(path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise MissingPackageError(
        f"reading {path} needs PyTorch, which is not installed: `pip install torch`, or convert "
        "it once elsewhere to .safetensors or .npz (numpy arrays keyed by state-dict name)"
    ) from None
  try:
    with paths.open_read(path) as f:  # (seekable, also in a bucket)
      state = torch.load(f, map_location="cpu", weights_only=True)  # refuses pickled code
  except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
    raise InputError(f"{path} is not a readable PyTorch state dict of tensors ({e})") from None
  for key in ("ema", "model"):  # training checkpoints wrap the state dicts: prefer the EMA
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
      break
  return {name: tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16
          else tensor.detach().numpy() for name, tensor in state.items()}


def save_tensors(path, tensors: dict[str, np.ndarray]):
  """Writes a flat {name: array} as .safetensors or .npz (by extension), published whole."""
  path = paths.as_path(path)
  arrays = {name: np.ascontiguousarray(np.asarray(value)) for name, value in tensors.items()}
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    state_files.write_atomic(path, safetensors.numpy.save(arrays))
  elif suffix == ".npz":
    state_files.write_npz(path, arrays)
  else:
    raise InputError(f"{path}: can only write .safetensors or .npz, got {suffix!r}")


def flat_paths(tree) -> dict[tuple[str, ...], object]:
  """{('a', 'b', 'kernel'): leaf} of a parameter tree (of dicts)."""
  return {tuple(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def refuse_mismatch(header: str, problems: dict[str, list[str]], footer: str | None = None,
                    limit: int = 20):
  """Raises one ValueError listing every kind of problem at once: `header`, then for each
  non-empty list of `problems` ({title: items}) its title, count and first `limit` items,
  then `footer`. Returns when every list is empty."""
  lines = [f"  {title} ({len(items)}): " + "; ".join(items[:limit])
           + ("; ..." if len(items) > limit else "") for title, items in problems.items() if items]
  if lines:
    raise InputError("\n".join([header, *lines, *([footer] if footer else [])]))
