"""Image arrays to files: [-1, 1] floats to uint8, grids as PNG, arrays as .npz."""
from pathlib import Path

import numpy as np
from PIL import Image


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
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if upscale > 1:
    image_HWC = image_HWC.repeat(upscale, 0).repeat(upscale, 1)
  mode = "L" if image_HWC.shape[-1] == 1 else "RGB"
  Image.fromarray(image_HWC[..., 0] if mode == "L" else image_HWC, mode).save(path)


def save_npz(images_NHWC: np.ndarray, labels, path):
  """uint8 NHWC images in `arr_0` and labels in `labels`, as evaluation suites read them."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, arr_0=images_NHWC, labels=np.asarray(labels))
