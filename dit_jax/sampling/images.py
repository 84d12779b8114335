"""Image arrays to files: [-1, 1] floats to uint8, grids as PNG, arrays as .npz."""
import io
import pickle
import struct
import zipfile
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image

from dit_jax import paths, state_files
from dit_jax.errors import DitJaxError, InputError, MissingFileError

# What reading a damaged, empty, missing or unreadable .npz raises (np.load: pickle, EOF).
NPZ_READ_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, pickle.UnpicklingError, OSError)


def to_uint8(images_NHWC) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255] (values outside are clipped)."""
  images = (np.asarray(images_NHWC, np.float32) + 1.0) * 127.5
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def make_grid(images_NHWC: np.ndarray, rows: int, pad: int = 1) -> np.ndarray:
  """N images -> one (rows*H', cols*W', C) image, filled row by row, with a pad border."""
  n, h, w, c = images_NHWC.shape
  cols = -(-n // rows)
  grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), images_NHWC.dtype)
  for i, image in enumerate(images_NHWC):
    r, col = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(image_HWC: np.ndarray, path, upscale: int = 1):
  """Writes a uint8 image; `upscale` repeats pixels so tiny images stay visible."""
  if upscale > 1:
    image_HWC = image_HWC.repeat(upscale, 0).repeat(upscale, 1)
  mode = "L" if image_HWC.shape[-1] == 1 else "RGB"
  png = io.BytesIO()
  Image.fromarray(image_HWC[..., 0] if mode == "L" else image_HWC, mode).save(png, "PNG")
  state_files.write_atomic(path, png.getvalue())  # local or gs://, published whole


def save_npz(images_NHWC: np.ndarray, labels, path):
  """uint8 NHWC images in `arr_0` and labels in `labels`, as evaluation suites read them."""
  save_npz_chunks([images_NHWC], labels, path)


def save_npz_chunks(chunks_NHWC: Iterable[np.ndarray], labels, path):
  """Like save_npz for images that arrive in chunks (n_i, H, W, C), n_i summing to
  len(labels): each chunk goes into `arr_0` as it comes, so memory holds one chunk however
  many images there are. The file (local or gs://) is published only when whole, so an
  interrupted run leaves no truncated .npz behind."""
  labels = np.asarray(labels)
  with state_files.atomic_writer(path) as f:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:  # np.savez's layout
      with archive.open("arr_0.npy", "w", force_zip64=True) as member:
        _write_npy_chunks(member, chunks_NHWC, len(labels))
      with archive.open("labels.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, labels, allow_pickle=False)


def _write_npy_chunks(stream, chunks, num: int):
  """One .npy of shape (num, ...) from chunks along the first axis: the header, sized from
  the first chunk, then each chunk's bytes in turn (no concatenation)."""
  first, written = None, 0
  for chunk in chunks:
    chunk = np.ascontiguousarray(chunk)
    if first is None:
      first = chunk
      header = np.lib.format.header_data_from_array_1_0(chunk)
      np.lib.format.write_array_header_1_0(stream, dict(header, shape=(num, *chunk.shape[1:])))
    if chunk.shape[1:] != first.shape[1:] or chunk.dtype != first.dtype:
      raise InputError(f"chunk of shape {chunk.shape} {chunk.dtype} after chunks of "
                       f"{first.shape[1:]} {first.dtype}: every chunk must hold the same images")
    written += len(chunk)
    if written > num:
      raise InputError(f"chunks hold more than the {num} images the labels announce")
    stream.write(chunk.data.cast("B"))
  if written != num:
    raise InputError(f"chunks held {written} images, the labels {num}: one label per image")


def load_npz_images(path) -> tuple[np.ndarray, np.ndarray | None]:
  """(uint8 (N, H, W, C) images of `arr_0`, the `labels` array or None) of a sample or
  reference .npz. An uncompressed member (np.savez, `dit-jax sample`) of a local file is
  memory-mapped, so a 50,000-image set is read as it is used, not loaded whole; one in a bucket
  (gs://) is streamed into memory (50,000 256x256 RGB images: 9.8 GB)."""
  try:
    return _read_npz_images(path)
  except NPZ_READ_ERRORS as e:
    raise npz_error(path, e) from None


def npz_error(path, error: Exception) -> DitJaxError:
  """The library error of an .npz that could not be read: missing, or what is wrong with it."""
  if isinstance(error, DitJaxError):
    return error
  if isinstance(error, OSError) and paths.is_remote(path):  # missing, refused, unreachable
    return paths.remote_error(path, error)
  if isinstance(error, FileNotFoundError):
    return MissingFileError(f"{path} not found: pass an existing .npz file")
  reason = error.strerror if isinstance(error, OSError) and error.strerror else error
  return InputError(f"{path} is not a readable .npz file ({reason or type(error).__name__}): "
                    "it is damaged, empty, unreadable or of another format; write it again "
                    "(np.savez, `dit-jax sample --out F.npz`)")


def _read_npz_images(path) -> tuple[np.ndarray, np.ndarray | None]:
  with paths.open_read(path) as f, zipfile.ZipFile(f) as archive:
    names = archive.namelist()
    if "arr_0.npy" not in names:
      raise InputError(f"{path} has no images in arr_0 (it holds {names}): pass an .npz of "
                       "uint8 NHWC images, as `dit-jax sample --out F.npz` writes")
    labels = None
    if "labels.npy" in names:
      with archive.open("labels.npy") as member:
        labels = np.lib.format.read_array(member, allow_pickle=False)
    info = archive.getinfo("arr_0.npy")
    if info.compress_type != zipfile.ZIP_STORED or paths.is_remote(path):  # (no mmap of gs)
      with archive.open(info) as member:
        arr = np.lib.format.read_array(member, allow_pickle=False)
    else:
      arr = _memmap_member(path, info)
  if arr.dtype != np.uint8 or arr.ndim != 4:
    raise InputError(f"{path}: arr_0 is {arr.dtype} {arr.shape}; expected uint8 (N, H, W, C) "
                     "images in 0..255")
  return arr, labels


def _memmap_member(path, info: zipfile.ZipInfo) -> np.ndarray:
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26..30
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  if fortran or dtype.hasobject:
    raise InputError(f"{path}: arr_0 is not a plain C-ordered array")
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
