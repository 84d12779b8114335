"""The Inception-v3 of FID, sFID and Inception Score, with pytorch-fid's weights.

Every FID implementation reproduces one network: the TensorFlow graph of 2015-12-05, which
pytorch-fid ports as torchvision's Inception3 (1008 classes) with four kinds of block patched
to match TensorFlow. `FIDInception` is that port in Flax, NHWC:

    params = load_inception("pt_inception-2015-12-05-6726825d.pth")  # or .npz / .safetensors
    x_BHWC = preprocess(images_uint8_BHWC, "adm")                   # (B, 299, 299, 3) in [-1, 1]
    out = FIDInception().apply({"params": params}, x_BHWC)
    out["pool"]      (B, 2048)  pool_3: FID, precision/recall
    out["spatial"]   (B, 2023)  mixed_6/conv, first 7 of 192 channels of 17x17, flattened HWC: sFID
    out["logits"]    (B, 1008)  pool @ fc.weight.T without the bias: Inception Score

The patches of pytorch-fid (TensorFlow's pools): average pools in Mixed_5b-5d, 6b-6e and 7b
leave the padding out of the mean; Mixed_7c's pool branch takes a max. Module names follow
pytorch-fid's state dict (`Mixed_6d.branch1x1.conv.weight` is params["Mixed_6d"]["branch1x1"]
["conv"]["kernel"]), so weights map by renaming; BatchNorm statistics live in "params" too,
since the network is only ever run for inference.

Two preprocessings, which differ in the resize to 299 (see `preprocess`): "adm", the TF graph
as the ADM evaluator and torch-fidelity run it, and "pytorch_fid".
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dit_jax.convert.io import flat_paths, load_tensors, refuse_mismatch
from dit_jax.errors import InputError, MissingFileError

Dtype = jnp.dtype
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port of the TF graph
IMAGE_SIZE = 299
SPATIAL_CHANNELS = 7  # of Mixed_6d.branch1x1, as the ADM evaluator keeps for sFID
BN_EPS = 1e-3  # torchvision's BasicConv2d
MODES = ("adm", "pytorch_fid")
# FID compares features to ~1e-4; TPUs multiply float32 in bfloat16 passes by default.
HIGHEST = jax.lax.Precision.HIGHEST


# ---- the network ----

class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics, in float32: (x - mean) / sqrt(var + eps) * scale + bias."""
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    x = x.astype(jnp.float32)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class BasicConv(nn.Module):
  """torchvision's BasicConv2d: conv without bias -> frozen BatchNorm -> ReLU.

  padding "SAME" is PyTorch's padding k // 2 for the odd kernels used here (stride 1)."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: str = "SAME"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, (self.stride, self.stride), self.padding,
                use_bias=False, dtype=self.dtype, precision=HIGHEST, name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x)).astype(self.dtype)


def _avg_pool_3x3(x):
  # TensorFlow's SAME average pool divides by the pixels inside the image only.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int = 1):
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


def _convs(dtype, x, *layers):
  """x through BasicConvs in sequence, each layer (name, features[, kernel, stride, padding])."""
  for name, *args in layers:
    x = BasicConv(*args, dtype=dtype, name=name)(x)
  return x


class InceptionA(nn.Module):
  """Mixed_5b-5d: 1x1 | 1x1, 5x5 | 1x1, 3x3, 3x3 | avg pool, 1x1."""
  pool_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    convs = functools.partial(_convs, self.dtype)
    return jnp.concatenate([
        convs(x, ("branch1x1", 64)),
        convs(x, ("branch5x5_1", 48), ("branch5x5_2", 64, (5, 5))),
        convs(x, ("branch3x3dbl_1", 64), ("branch3x3dbl_2", 96, (3, 3)),
              ("branch3x3dbl_3", 96, (3, 3))),
        convs(_avg_pool_3x3(x), ("branch_pool", self.pool_features))], -1)


class InceptionB(nn.Module):
  """Mixed_6a, 35 -> 17: 3x3/2 | 1x1, 3x3, 3x3/2 | max pool/2."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    convs = functools.partial(_convs, self.dtype)
    return jnp.concatenate([
        convs(x, ("branch3x3", 384, (3, 3), 2, "VALID")),
        convs(x, ("branch3x3dbl_1", 64), ("branch3x3dbl_2", 96, (3, 3)),
              ("branch3x3dbl_3", 96, (3, 3), 2, "VALID")),
        _max_pool_3x3(x, 2)], -1)


class InceptionC(nn.Module):
  """Mixed_6b-6e: 1x1 | 1x1, 1x7, 7x1 | 1x1, (7x1, 1x7) x2 | avg pool, 1x1."""
  channels_7x7: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    convs = functools.partial(_convs, self.dtype)
    c7 = self.channels_7x7
    return jnp.concatenate([
        convs(x, ("branch1x1", 192)),
        convs(x, ("branch7x7_1", c7), ("branch7x7_2", c7, (1, 7)), ("branch7x7_3", 192, (7, 1))),
        convs(x, ("branch7x7dbl_1", c7), ("branch7x7dbl_2", c7, (7, 1)),
              ("branch7x7dbl_3", c7, (1, 7)), ("branch7x7dbl_4", c7, (7, 1)),
              ("branch7x7dbl_5", 192, (1, 7))),
        convs(_avg_pool_3x3(x), ("branch_pool", 192))], -1)


class InceptionD(nn.Module):
  """Mixed_7a, 17 -> 8: 1x1, 3x3/2 | 1x1, 1x7, 7x1, 3x3/2 | max pool/2."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    convs = functools.partial(_convs, self.dtype)
    return jnp.concatenate([
        convs(x, ("branch3x3_1", 192), ("branch3x3_2", 320, (3, 3), 2, "VALID")),
        convs(x, ("branch7x7x3_1", 192), ("branch7x7x3_2", 192, (1, 7)),
              ("branch7x7x3_3", 192, (7, 1)), ("branch7x7x3_4", 192, (3, 3), 2, "VALID")),
        _max_pool_3x3(x, 2)], -1)


class InceptionE(nn.Module):
  """Mixed_7b, 7c: 1x1 | 1x1, (1x3 | 3x1) | 1x1, 3x3, (1x3 | 3x1) | pool, 1x1.

  pool "avg" for Mixed_7b; "max" for Mixed_7c, as in the TF graph (and pytorch-fid)."""
  pool: str = "avg"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    convs = functools.partial(_convs, self.dtype)
    b3 = convs(x, ("branch3x3_1", 384))
    bd = convs(x, ("branch3x3dbl_1", 448), ("branch3x3dbl_2", 384, (3, 3)))
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
    return jnp.concatenate([
        convs(x, ("branch1x1", 320)),
        convs(b3, ("branch3x3_2a", 384, (1, 3))), convs(b3, ("branch3x3_2b", 384, (3, 1))),
        convs(bd, ("branch3x3dbl_3a", 384, (1, 3))), convs(bd, ("branch3x3dbl_3b", 384, (3, 1))),
        convs(pooled, ("branch_pool", 192))], -1)


class FIDInception(nn.Module):
  """(B, 299, 299, 3) images in [-1, 1] -> {"pool", "spatial", "logits"}, float32 (module
  docstring). `dtype` is the compute dtype of the convs; BatchNorm and the outputs are float32."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    if x_BHWC.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
      raise InputError(f"FIDInception takes (B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) images in "
                       f"[-1, 1], got shape {x_BHWC.shape}: resize them with `preprocess`")
    conv = functools.partial(BasicConv, dtype=self.dtype)
    kw = dict(dtype=self.dtype)
    x = x_BHWC.astype(self.dtype)
    x = conv(32, (3, 3), 2, "VALID", name="Conv2d_1a_3x3")(x)    # 149
    x = conv(32, (3, 3), padding="VALID", name="Conv2d_2a_3x3")(x)  # 147
    x = conv(64, (3, 3), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2)                                     # 73
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), padding="VALID", name="Conv2d_4a_3x3")(x)  # 71
    x = _max_pool_3x3(x, 2)                                     # 35
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, **kw, name=name)(x)
    x = InceptionB(**kw, name="Mixed_6a")(x)                    # 17
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
      x = InceptionC(c7, **kw, name=name)(x)
    # The first 192 channels of an InceptionC output are its branch1x1 (TF's mixed_6/conv).
    spatial_B17x17x7 = x[..., :SPATIAL_CHANNELS].astype(jnp.float32)
    x = InceptionC(192, **kw, name="Mixed_6e")(x)
    x = InceptionD(**kw, name="Mixed_7a")(x)                    # 8
    x = InceptionE("avg", **kw, name="Mixed_7b")(x)
    x = InceptionE("max", **kw, name="Mixed_7c")(x)
    pool_BD = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # ADM's Inception Score and torch-fidelity's logits_unbiased: the fc weight, no bias.
    logits_BK = nn.Dense(1008, use_bias=False, precision=HIGHEST, name="fc")(pool_BD)
    return {"pool": pool_BD, "spatial": spatial_B17x17x7.reshape(x.shape[0], -1),
            "logits": logits_BK}


# ---- preprocessing: uint8 images -> (B, 299, 299, 3) in [-1, 1] ----

def interpolation_matrix(n_in: int, n_out: int, *, half_pixel_centers: bool) -> np.ndarray:
  """(n_out, n_in) float32 weights of 1-D linear interpolation, each row summing to 1.

  half_pixel_centers False: TensorFlow 1's legacy resize_bilinear (align_corners=False), used
  inside the 2015 graph: source = dst * in / out. True: torch's interpolate(mode="bilinear",
  align_corners=False): source = (dst + 0.5) * in / out - 0.5, clamped at 0. The upper
  neighbour is clamped to the last pixel. Coordinates are float32, as both libraries compute
  them. No antialiasing: a downscale samples, as they do."""
  scale = np.float32(n_in) / np.float32(n_out)
  dst = np.arange(n_out, dtype=np.float32)
  if half_pixel_centers:
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  else:
    src = dst * scale
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo.astype(np.float32)
  rows = np.arange(n_out)
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (rows, lo), 1 - frac)
  np.add.at(m, (rows, hi), frac)  # adds to the same pixel where hi == lo
  return m


def resize_bilinear(images_BHWC, size: int | tuple[int, int], *, half_pixel_centers: bool):
  """Float images (B, H, W, C) -> (B, h, w, C), bilinear (see `interpolation_matrix`), as two
  exact matrix products; an axis that keeps its size is left as it is."""
  images_BHWC = jnp.asarray(images_BHWC)
  if images_BHWC.ndim != 4 or not jnp.issubdtype(images_BHWC.dtype, jnp.floating):
    raise InputError(f"resize_bilinear takes float images (B, H, W, C), got "
                     f"{images_BHWC.dtype} of shape {images_BHWC.shape}")
  h_out, w_out = (size, size) if isinstance(size, int) else size
  _, h, w, _ = images_BHWC.shape
  x = images_BHWC
  matrix = lambda n_in, n_out: jnp.asarray(
      interpolation_matrix(n_in, n_out, half_pixel_centers=half_pixel_centers), x.dtype)
  if h != h_out:
    x = jnp.einsum("oh,bhwc->bowc", matrix(h, h_out), x, precision=HIGHEST)
  if w != w_out:
    x = jnp.einsum("pw,bowc->bopc", matrix(w, w_out), x, precision=HIGHEST)
  return x


def preprocess(images_BHWC, mode: str):
  """uint8 images (B, H, W, 3) or grayscale (B, H, W, 1), 0..255 -> float32 (B, 299, 299, 3)
  in [-1, 1], as the reference implementation of `mode` feeds its network:

    "adm":          the TF graph (ADM evaluator, torch-fidelity): pixels 0..255, TF1 resize
                    (half_pixel_centers=False), then (x - 128) / 128
    "pytorch_fid":  x / 255, torch's bilinear resize (half_pixel_centers=True), then 2x - 1

  Shapes only decide the computation, so it jits (mode static)."""
  if mode not in MODES:
    raise InputError(f"preprocess mode {mode!r}: use one of {MODES}")
  shape, dtype = np.shape(images_BHWC), getattr(images_BHWC, "dtype", None)
  if len(shape) != 4 or shape[-1] not in (1, 3) or dtype != np.uint8:
    raise InputError(f"preprocess takes uint8 images (B, H, W, 3) or (B, H, W, 1) with values "
                     f"0..255, got {dtype} of shape {shape}")
  x = jnp.asarray(images_BHWC).astype(jnp.float32)
  if mode == "adm":
    x = resize_bilinear(x, IMAGE_SIZE, half_pixel_centers=False)
    x = (x - 128.0) / 128.0
  else:
    x = resize_bilinear(x / 255.0, IMAGE_SIZE, half_pixel_centers=True)
    x = 2.0 * x - 1.0
  return jnp.broadcast_to(x, x.shape[:3] + (3,))  # grayscale: the same plane thrice


# ---- weights: pytorch-fid's state dict <-> params ----

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
# Read and dropped: BatchNorm's step counter, and the fc bias, which no output uses.
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_KEYS = ("fc.bias",)


@functools.cache
def abstract_params() -> dict:
  """The param tree of FIDInception as ShapeDtypeStructs, without memory (traced once)."""
  x = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: FIDInception().init(jax.random.PRNGKey(0), x), x)["params"]


def _torch_key(path: tuple[str, ...]) -> str:
  return ".".join(path[:-1] + (_TORCH_LEAF[path[-1]],))


def _torch_shape(shape) -> tuple[int, ...]:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
  return tuple(reversed(shape))  # dense (in, out) -> Linear (out, in); vectors unchanged


def _from_torch(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return value.T


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """{pytorch-fid state-dict key: PyTorch-layout shape} of every weight FIDInception uses (the
  file also holds fc.bias and may hold BatchNorm's num_batches_tracked, which are ignored)."""
  return {_torch_key(path): _torch_shape(leaf.shape)
          for path, leaf in flat_paths(abstract_params()).items()}


def _ignored(key: str) -> bool:
  return key in _IGNORED_KEYS or key.endswith(_IGNORED_SUFFIXES)


def inception_params(state: dict[str, np.ndarray], source: str = "the state dict") -> dict:
  """pytorch-fid's {key: array} (conv OIHW, Linear (out, in)) -> FIDInception params, float32.

  Raises ValueError listing the first missing, unexpected and misshapen keys, if any."""
  paths = {_torch_key(path): path for path in flat_paths(abstract_params())}
  shapes = state_dict_shapes()
  state = {k: np.asarray(v) for k, v in state.items() if not _ignored(k)}
  misshapen = [f"{k}: expected {shapes[k]}, found {state[k].shape}"
               for k in sorted(set(paths) & set(state)) if state[k].shape != shapes[k]]
  refuse_mismatch(f"{source} is not the FID Inception-v3 state dict: expected pytorch-fid's "
                  f"{WEIGHTS_FILE} (or an .npz/.safetensors of that state dict)", {
                      "missing": sorted(set(paths) - set(state)),
                      "unexpected": sorted(set(state) - set(paths)), "wrong shape": misshapen},
                  limit=5)
  return traverse_util.unflatten_dict(
      {path: jnp.asarray(_from_torch(state[key]), jnp.float32) for key, path in paths.items()})


def load_inception(path) -> dict:
  """FIDInception params from pytorch-fid's weight file (.pth, read with torch when installed)
  or an .npz/.safetensors holding the same state dict, local or gs://. Nothing is downloaded."""
  try:
    state = load_tensors(path)
  except MissingFileError:
    raise MissingFileError(
        f"Inception weights {path} not found: pass the path of pytorch-fid's {WEIGHTS_FILE} "
        "(the FID Inception-v3 ported from TensorFlow; dit-jax downloads nothing), or an "
        ".npz/.safetensors of that state dict") from None
  return inception_params(state, source=str(path))
