"""Writes inception_reference.npz: pytorch-fid's own network on fixed weights and images.

Run by hand (not by CI) with PyTorch, torchvision and pytorch-fid 0.3.0 installed, from the
repository root:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch torchvision pytorch-fid==0.3.0  # CPU torch is enough
    /tmp/torchenv/bin/python tests/eval/make_inception_reference.py

(The committed file: torch 2.13.0+cpu, then torchvision 0.28.0 and pytorch-fid 0.3.0 with
--no-deps, plus numpy, pillow and scipy, which keeps CUDA packages out; see
`import_pytorch_fid_inception` for what that takes.)

Nothing is downloaded: pytorch-fid's weight loader is replaced by one that returns
`random_state_dict(SEED)` (inception_weights.py), so test_inception.py regenerates the same
weights and images without torch. The script runs pytorch-fid's InceptionV3 as its FID code
does (resize_input and normalize_input, so torch's bilinear resize to 299 and 2x - 1) on two
groups of noise images, one upsampled and one downsampled, and saves:

  pool     (B, 2048)  the output of block 3 (pool_3)
  spatial  (B, 2023)  Mixed_6d.branch1x1 (after BN and ReLU), NCHW -> NHWC, first 7 channels,
                      flattened per image
  logits   (B, 1008)  pool @ fc.weight.T
  keys, shapes        the network's state-dict table (num_batches_tracked left out), so the
                      test checks dit_jax's names and shapes against torchvision's
"""
import sys
from pathlib import Path

import numpy as np
import torch

from inception_weights import SEED, noise_images, random_state_dict

# (seed, (B, H, W, 3)) of each group of images: upsampled and downsampled to 299, non-square.
IMAGE_GROUPS = ((1, (2, 40, 56, 3)), (2, (2, 360, 420, 3)))
OUT = Path(__file__).with_name("inception_reference.npz")


def import_pytorch_fid_inception():
  """pytorch_fid.inception, even where torchvision's compiled ops cannot load.

  PyPI's torchvision wheels link CUDA torch; next to the CPU torch wheel their C extension does
  not load, and torchvision's import then fails registering fake kernels for the missing ops
  (nms). Those registrations are skipped during the import: the Inception model code is plain
  Python and uses none of the ops."""
  register_fake = torch.library.register_fake
  torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
  try:
    import pytorch_fid.inception as fid_inception
  finally:
    torch.library.register_fake = register_fake
  return fid_inception


def pytorch_fid_shapes(fid_inception) -> dict[str, tuple[int, ...]]:
  """{state-dict key: shape} of pytorch-fid's network (num_batches_tracked left out), read from
  `fid_inception_v3()` built with its weight loading switched off."""
  fid_inception.load_state_dict_from_url = lambda *args, **kwargs: None
  load_state_dict = torch.nn.Module.load_state_dict
  torch.nn.Module.load_state_dict = lambda *args, **kwargs: None
  try:
    table = fid_inception.fid_inception_v3().state_dict()
  finally:
    torch.nn.Module.load_state_dict = load_state_dict
  return {k: tuple(v.shape) for k, v in table.items() if not k.endswith("num_batches_tracked")}


def main():
  fid_inception = import_pytorch_fid_inception()
  import pytorch_fid
  import torchvision
  shapes = pytorch_fid_shapes(fid_inception)
  state = random_state_dict(SEED, shapes)
  # pytorch-fid's download, replaced: its loader gets the random weights instead.
  fid_inception.load_state_dict_from_url = (
      lambda *args, **kwargs: {k: torch.from_numpy(v) for k, v in state.items()})
  model = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True,
                                    use_fid_inception=True).eval()
  fc_weight = torch.from_numpy(state["fc.weight"])
  captured = {}
  mixed_6d = model.blocks[2][6]  # block 2: Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e
  mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: captured.update(spatial=out))

  pools, spatials, logits = [], [], []
  for seed, shape in IMAGE_GROUPS:
    images = noise_images(seed, shape)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # as ToTensor
    with torch.no_grad():
      pool = model(x)[0][:, :, 0, 0]
      logits.append((pool @ fc_weight.T).numpy())
    pools.append(pool.numpy())
    spatial = captured["spatial"].permute(0, 2, 3, 1)[..., :7]  # NHWC
    spatials.append(spatial.reshape(shape[0], -1).numpy())

  keys = sorted(shapes)
  np.savez_compressed(
      OUT, pool=np.concatenate(pools).astype(np.float32),
      spatial=np.concatenate(spatials).astype(np.float32),
      logits=np.concatenate(logits).astype(np.float32),
      image_seeds=np.array([s for s, _ in IMAGE_GROUPS]),
      image_shapes=np.array([shape for _, shape in IMAGE_GROUPS]),
      weight_seed=np.array(SEED), keys=np.array(keys, dtype=np.bytes_),
      shapes=np.array([shapes[k] + (0,) * (4 - len(shapes[k])) for k in keys]),
      versions=np.array([f"torch {torch.__version__}", f"torchvision {torchvision.__version__}",
                         f"pytorch-fid {pytorch_fid.__version__}"], dtype=np.bytes_))
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes) with torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, pytorch-fid {pytorch_fid.__version__}")
  for name, value in np.load(OUT).items():
    if value.dtype == np.float32:
      print(f"  {name} {value.shape} mean |x| {np.abs(value).mean():.3g} max {value.max():.3g}")


if __name__ == "__main__":
  sys.exit(main())
