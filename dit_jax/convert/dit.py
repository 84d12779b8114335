"""Published PyTorch DiT checkpoints (the facebookresearch/DiT state dict) <-> dit_jax DiT.

    params, info = import_state(load_tensors("DiT-XL-2-256x256.pt"))   # or convert_file(...)
    model = make_model(info)
    out = model.apply({"params": params}, x_BHWC, t_B, {"label": y_B})   # t in [0, 1]

Layouts (torch Linear weights are (out, in): our kernels are their transposes, reshaped):
  x_embedder.proj          Conv2d (D, C, p, p) -> dense kernel (p*p*C, D); our patch tokens
                           are flattened (row, col, channel), the conv reads (channel, row, col)
  blocks.i.attn.qkv        (3D, D), outputs ordered (q/k/v, head, head dim) -> (D, 3, N, H)
  blocks.i.attn.proj       (D, D), inputs ordered (head, head dim) -> (N, H, D)
  blocks.i.adaLN_modulation.1   (6D, D), chunks (shift, scale, gate) x (attn, mlp) -> (D, 6, D)
  final_layer.adaLN_modulation.1  (2D, D), chunks (shift, scale) -> (D, 2, D)
  final_layer.linear       (p*p*C', D), outputs ordered (row, col, channel) as our unpatchify
  pos_embed                (1, T, D) fixed 2D sin-cos buffer: checked against ours, not stored
  y_embedder.embedding_table  (num_classes + 1, D), the last row the null class

Time. The published models embed the integer DDPM step n (999 = noisiest) directly, while our
samplers and the DDPM objective call models with t = 1 - (n + 1) / N (flow.paths). A converted
model therefore has time_scale=1 and time_input='ddpm_step' (info["time_input"]): the DiT maps
our t back to the (rounded) step n before embedding it, so it samples and fine-tunes like any
model of the contract.

A converted checkpoint directory holds params.npz (flat 'a/b/c' keys of the parameter tree) and
dit.json (the DiT fields, the latent size the file was trained at, and the time convention).
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import paths
from dit_jax.convert.io import load_tensors, refuse_mismatch, save_tensors
from dit_jax.errors import InputError, MissingFileError
from dit_jax.models.dit import PRESETS, SIZES, DiT, preset
from dit_jax.nn.posenc import sincos_2d
from dit_jax.state_files import read_json, write_json

FREQUENCY_DIM = 256  # sinusoidal features of the timestep embedder (DiT and ours)
TIME_INPUT = "ddpm_step"
NUM_DDPM_STEPS = 1000
PARAMS_FILE, CONFIG_FILE = "params.npz", "dit.json"
POS_EMBED_ATOL = 1e-5


def expected_shapes(info: dict) -> dict[str, tuple[int, ...]]:
  """{state-dict name: shape} of the original DiT with the fields of `info` (see infer_info)."""
  D, C, p = info["hidden_size"], info["in_channels"], info["patch_size"]
  F = int(D * info["mlp_ratio"])
  out_channels = 2 * C if info["learn_sigma"] else C
  grid = info["input_size"] // p
  linears = {"t_embedder.mlp.0": (D, FREQUENCY_DIM), "t_embedder.mlp.2": (D, D),
             "final_layer.linear": (p * p * out_channels, D),
             "final_layer.adaLN_modulation.1": (2 * D, D)}
  for i in range(info["depth"]):
    linears.update({f"blocks.{i}.attn.qkv": (3 * D, D), f"blocks.{i}.attn.proj": (D, D),
                    f"blocks.{i}.mlp.fc1": (F, D), f"blocks.{i}.mlp.fc2": (D, F),
                    f"blocks.{i}.adaLN_modulation.1": (6 * D, D)})
  shapes = {"pos_embed": (1, grid * grid, D), "x_embedder.proj.weight": (D, C, p, p),
            "x_embedder.proj.bias": (D,)}
  if info["num_classes"]:
    shapes["y_embedder.embedding_table.weight"] = (info["num_classes"] + 1, D)
  for name, (out, inp) in linears.items():  # torch Linear: weight (out, in), bias (out,)
    shapes.update({f"{name}.weight": (out, inp), f"{name}.bias": (out,)})
  return shapes


def check_state(state: dict, info: dict):
  """Raises one ValueError listing every missing key, unexpected key and shape mismatch."""
  expected = expected_shapes(info)
  wrong = [f"{k}: file {tuple(state[k].shape)}, expected {expected[k]}"
           for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
  refuse_mismatch(f"checkpoint does not match DiT {describe(info)}:", {
      "missing keys": sorted(set(expected) - set(state)),
      "unexpected keys": sorted(set(state) - set(expected)), "shape mismatches": wrong},
      "  (is it a facebookresearch/DiT state dict? pass model='DiT-XL/2' etc. if the size "
      "cannot be inferred)")


def describe(info: dict) -> str:
  return (f"(depth={info['depth']}, hidden_size={info['hidden_size']}, num_heads="
          f"{info['num_heads']}, patch_size={info['patch_size']}, in_channels="
          f"{info['in_channels']}, learn_sigma={info['learn_sigma']}, num_classes="
          f"{info['num_classes']}, input_size={info['input_size']})")


def _shape(state, key):
  if key not in state:
    raise InputError(f"checkpoint has no {key!r}: not a facebookresearch/DiT state dict (keys "
                     f"start with {sorted(state)[:5]})")
  return tuple(state[key].shape)


def infer_info(state: dict, model: str | None = None, num_heads: int | None = None) -> dict:
  """DiT fields from the tensor shapes: width, channels and patch from the patch conv, depth
  from the block count, output channels (learn_sigma) from the final linear, classes from the
  label table, latent size from pos_embed. Heads cannot be read from shapes: they come from
  the preset whose (depth, width) match, or from `model` ('DiT-XL/2') / `num_heads`."""
  D, C, p, p2 = _shape(state, "x_embedder.proj.weight")
  depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
  out = _shape(state, "final_layer.linear.weight")[0] // (p * p)
  if out not in (C, 2 * C):
    raise InputError(f"final_layer.linear has {out} output channels per pixel for {C} input "
                     f"channels: expected {C} or {2 * C} (learn_sigma)")
  T = _shape(state, "pos_embed")[1]
  grid = round(T ** 0.5)
  if grid * grid != T:
    raise InputError(f"pos_embed has {T} tokens, not a square grid: the original DiT is square")
  fc1 = state.get("blocks.0.mlp.fc1.weight")
  table = state.get("y_embedder.embedding_table.weight")
  info = {"depth": depth, "hidden_size": D, "patch_size": p, "in_channels": C,
          "learn_sigma": out == 2 * C, "input_size": grid * p,
          "num_classes": 0 if table is None else table.shape[0] - 1,
          "mlp_ratio": 4.0 if fc1 is None else fc1.shape[0] / D}
  if model is not None:
    want = preset(model)
    got = {"depth": depth, "hidden_size": D, "patch_size": p}
    if any(want[k] != got[k] for k in got):
      raise InputError(f"--model {model} is depth={want['depth']}, hidden_size="
                       f"{want['hidden_size']}, patch_size={want['patch_size']} but the file has "
                       f"{got}: pass the matching model or leave it out to infer it")
    num_heads = want["num_heads"]
  if num_heads is None:
    sizes = [s for s, v in SIZES.items() if (v["depth"], v["hidden_size"]) == (depth, D)]
    if not sizes:
      raise InputError(f"no DiT preset has depth={depth} and hidden_size={D}, so the head count "
                       "is unknown: pass num_heads (--num-heads)")
    num_heads = SIZES[sizes[0]]["num_heads"]
  info["num_heads"] = int(num_heads)
  if p != p2 or D % info["num_heads"]:
    raise InputError(f"unsupported patch conv {(D, C, p, p2)} or num_heads={num_heads}")
  return info


def preset_name(info: dict) -> str | None:
  """'DiT-XL/2' when the size matches a preset, else None."""
  for name in PRESETS:
    if all(info[k] == v for k, v in preset(name).items()):
      return name
  return None


def model_fields(info: dict) -> dict:
  """DiT(**fields) of a converted model: the published design, whose time embedding takes the
  DDPM step n = N (1 - t) - 1 (time_input='ddpm_step'; the model maps our t itself)."""
  keys = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "num_classes",
          "learn_sigma")
  return dict({k: info[k] for k in keys}, conditioning="adaln_zero", posenc="sincos",
              time_scale=1.0, time_input=info.get("time_input", TIME_INPUT),
              num_ddpm_steps=info.get("num_ddpm_steps", NUM_DDPM_STEPS))


def make_model(info: dict, **overrides) -> DiT:
  """The dit_jax DiT for a converted checkpoint (overrides: dtype, attention_backend, ...)."""
  return DiT(**{**model_fields(info), **overrides})


# Tensor layouts. These use only array methods so that jax.eval_shape can run them on shapes.


def _linear(state, name, in_shape=None, out_shape=None):
  """The torch Linear `name` (weight (out, in)) of a state dict -> {'kernel': (*in_shape,
  *out_shape), 'bias': out_shape}."""
  w, b = state[f"{name}.weight"], state[f"{name}.bias"]
  out_features, in_features = w.shape
  in_shape = in_shape or (in_features,)
  out_shape = out_shape or (out_features,)
  return {"kernel": w.T.reshape(*in_shape, *out_shape), "bias": b.reshape(*out_shape)}


def _torch_linear(state, name, layer):
  """Inverse of `_linear`: sets `name`'s weight and bias in `state` (the kernel's leading dims
  are the input features)."""
  kernel, bias = layer["kernel"], layer["bias"]
  out_features = int(np.prod(bias.shape))
  state[f"{name}.weight"] = kernel.reshape(-1, out_features).T
  state[f"{name}.bias"] = bias.reshape(out_features)


def _block_to_params(state, i, D, N):
  linear = lambda name, **shapes: _linear(state, f"blocks.{i}.{name}", **shapes)
  H = D // N
  return {
      "adaLN": {"linear": linear("adaLN_modulation.1", out_shape=(6, D))},
      "attn": {"qkv": linear("attn.qkv", out_shape=(3, N, H)),
               "out": linear("attn.proj", in_shape=(N, H))},
      "mlp": {"fc1": linear("mlp.fc1"), "fc2": linear("mlp.fc2")},
  }


def state_to_params(state: dict, info: dict, scan_layers: bool = False) -> dict:
  """Original state dict -> our parameter tree (no validation; see `import_state`)."""
  D, p, C = info["hidden_size"], info["patch_size"], info["in_channels"]
  conv = state["x_embedder.proj.weight"]  # (D, C, p, p): out, channel, row, col
  params = {
      "x_embedder": {"kernel": conv.transpose(2, 3, 1, 0).reshape(p * p * C, D),
                     "bias": state["x_embedder.proj.bias"]},
      "t_embedder": {f"mlp_{j}": _linear(state, f"t_embedder.mlp.{j}") for j in (0, 2)},
      "final_layer": {
          "adaLN": {"linear": _linear(state, "final_layer.adaLN_modulation.1", out_shape=(2, D))},
          "linear": _linear(state, "final_layer.linear"),
      },
  }
  if info["num_classes"]:
    params["y_embedder"] = {"embedding": state["y_embedder.embedding_table.weight"]}
  blocks = [_block_to_params(state, i, D, info["num_heads"]) for i in range(info["depth"])]
  if scan_layers:
    params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  else:
    params.update({f"blocks_{i}": b for i, b in enumerate(blocks)})
  return params


def params_to_state(params: dict, info: dict) -> dict:
  """Our parameter tree (per-layer or scanned blocks) -> the original state dict, with the
  fixed pos_embed buffer of info['input_size']."""
  D, p, C = info["hidden_size"], info["patch_size"], info["in_channels"]
  kernel = params["x_embedder"]["kernel"]  # (p*p*C, D)
  grid = info["input_size"] // p
  state = {
      "pos_embed": np.asarray(sincos_2d(grid, grid, D))[None],
      "x_embedder.proj.weight": kernel.reshape(p, p, C, D).transpose(3, 2, 0, 1),
      "x_embedder.proj.bias": params["x_embedder"]["bias"],
  }
  for j in (0, 2):
    _torch_linear(state, f"t_embedder.mlp.{j}", params["t_embedder"][f"mlp_{j}"])
  if info["num_classes"]:
    state["y_embedder.embedding_table.weight"] = params["y_embedder"]["embedding"]
  _torch_linear(state, "final_layer.linear", params["final_layer"]["linear"])
  _torch_linear(state, "final_layer.adaLN_modulation.1", params["final_layer"]["adaLN"]["linear"])
  for i in range(info["depth"]):
    block = (jax.tree.map(lambda x, i=i: x[i], params["blocks"]) if "blocks" in params
             else params[f"blocks_{i}"])
    layers = {"attn.qkv": block["attn"]["qkv"], "attn.proj": block["attn"]["out"],
              "mlp.fc1": block["mlp"]["fc1"], "mlp.fc2": block["mlp"]["fc2"],
              "adaLN_modulation.1": block["adaLN"]["linear"]}
    for name, layer in layers.items():
      _torch_linear(state, f"blocks.{i}.{name}", layer)
  return state


def check_pos_embed(pos_embed: np.ndarray, info: dict):
  """The file's pos_embed must be our fixed sin-cos table (else the layouts disagree)."""
  grid = info["input_size"] // info["patch_size"]
  ours = sincos_2d(grid, grid, info["hidden_size"])
  err = float(np.max(np.abs(np.asarray(pos_embed, np.float64).reshape(ours.shape) - ours)))
  if err > POS_EMBED_ATOL:
    raise InputError(f"pos_embed differs from the 2D sin-cos table of a {grid}x{grid} grid by up "
                     f"to {err:.3g}: this is not a fixed sin-cos DiT (or its token order differs)")


def import_state(state: dict, model: str | None = None, num_heads: int | None = None,
                 scan_layers: bool = False) -> tuple[dict, dict]:
  """Validated conversion: state dict -> (float32 params, info). Raises ValueError with every
  missing/unexpected key and shape mismatch at once."""
  info = infer_info(state, model, num_heads)
  check_state(state, info)
  check_pos_embed(state["pos_embed"], info)
  arrays = {k: np.asarray(v, np.float32) for k, v in state.items()}
  params = state_to_params(arrays, info, scan_layers)
  info = dict(info, model=preset_name(info), time_input=TIME_INPUT,
              num_ddpm_steps=NUM_DDPM_STEPS)
  return jax.tree.map(np.ascontiguousarray, params), info


def export_state(params: dict, info: dict) -> dict[str, np.ndarray]:
  """Our parameters -> the original state dict (numpy float32), validated."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), flax.linen.unbox(params))
  state = params_to_state(params, info)
  state = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}
  check_state(state, info)
  return state


# Converted checkpoint directories.


def save_converted(out_dir, params: dict, info: dict):
  """Writes params.npz and dit.json to out_dir (local or gs://)."""
  out_dir = paths.as_path(out_dir)  # created by save_tensors
  save_tensors(out_dir / PARAMS_FILE,
               flax.traverse_util.flatten_dict(flax.linen.unbox(params), sep="/"))
  write_json(out_dir / CONFIG_FILE, info, indent=2, sort_keys=True)


def load_converted(ckpt_dir) -> tuple[dict, dict]:
  """(params, info) of a directory written by `save_converted` (local or gs://)."""
  ckpt_dir = paths.as_path(ckpt_dir)
  present = paths.list_names(ckpt_dir)
  for name in (PARAMS_FILE, CONFIG_FILE):
    if name not in present:
      raise MissingFileError(f"{ckpt_dir / name} not found: make the directory with "
                              "`dit-jax convert --from pytorch --in FILE.pt --out DIR`")
  info = read_json(ckpt_dir / CONFIG_FILE, "a converted DiT's description",
                   fix="convert the checkpoint again with `dit-jax convert --from pytorch --in "
                       f"FILE.pt --out {ckpt_dir}`")
  params = flax.traverse_util.unflatten_dict(load_tensors(ckpt_dir / PARAMS_FILE), sep="/")
  return params, info


def convert_file(in_path, out_dir, model: str | None = None, num_heads: int | None = None):
  """Original checkpoint (.pt / .safetensors / .npz) -> converted directory; returns info."""
  try:
    params, info = import_state(load_tensors(in_path), model, num_heads)
  except InputError as e:  # not a DiT state dict, or not one of `model`: name the file
    raise type(e)(e if str(in_path) in str(e) else f"{in_path}: {e}") from None
  save_converted(out_dir, params, info)
  return info


def export_file(ckpt_dir, out_path):
  """Converted directory -> original-layout .safetensors / .npz; returns info."""
  params, info = load_converted(ckpt_dir)
  save_tensors(out_path, export_state(params, info))
  return info


def convert(in_path, out_path, *, to_pytorch: bool = False, model: str | None = None,
            num_heads: int | None = None) -> str:
  """`dit-jax convert`: a facebookresearch/DiT checkpoint file -> converted directory, or with
  `to_pytorch` a converted directory -> a state-dict file; returns a one-line summary."""
  if to_pytorch:
    info = export_file(in_path, out_path)
  else:
    info = convert_file(in_path, out_path, model, num_heads)
  return f"wrote {out_path}: {info.get('model') or 'DiT'} {describe(info)}"
