"""Published-DiT conversion, checked against an independent numpy forward of the original.

`reference_forward` is written from the DiT paper and the layout of the original PyTorch code
(NCHW, torch Linear weights (out, in), Conv2d patch embedding, fused qkv with (3, heads, dim)
outputs, adaLN chunks (shift, scale, gate) x (msa, mlp), tanh GELU, 2D sin-cos table with the
column half first, unpatchify 'nhwpqc->nchpwq'), in float64, using none of dit_jax's modules.
Fake checkpoints are random weights in that layout, written as .npz / .safetensors.
"""
import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.convert import dit as convert
from dit_jax.convert.io import save_tensors
from dit_jax.flow.paths import ddpm_step_to_t
from dit_jax.models import model_fn
from dit_jax.models.dit import PRESETS, DiT, preset

C = 4


# ----------------------------------------------------------------------------- reference


def ref_sincos_1d(dim, pos):
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(pos.reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def ref_pos_embed(dim, grid_h, grid_w):
  """The original's table, generalised to grid_h x grid_w: meshgrid(w, h) puts the column
  index in grid[0], whose embedding fills the first half."""
  grid = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
  return np.concatenate([ref_sincos_1d(dim // 2, grid[0]), ref_sincos_1d(dim // 2, grid[1])], 1)


def ref_timestep_embedding(t, dim=256):
  """As the original: float32 frequencies and arguments, [cos | sin]."""
  half = dim // 2
  freqs = np.exp(-math.log(10000) * np.arange(half, dtype=np.float32) / half).astype(np.float32)
  args = (t.astype(np.float32)[:, None] * freqs[None]).astype(np.float64)
  return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def linear(x, w, b):
  return x @ w.T + b


def silu(x):
  return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


def ref_attention(x, w, i, heads):
  B, T, D = x.shape
  qkv = linear(x, w[f"blocks.{i}.attn.qkv.weight"], w[f"blocks.{i}.attn.qkv.bias"])
  qkv = qkv.reshape(B, T, 3, heads, D // heads).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, dim)
  logits = q @ k.transpose(0, 1, 3, 2) * (D // heads) ** -0.5
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  out = (attn @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
  return linear(out, w[f"blocks.{i}.attn.proj.weight"], w[f"blocks.{i}.attn.proj.bias"])


def reference_forward(w, x_NCHW, t_steps, y, heads):
  """The original DiT forward on integer DDPM steps; (N, C, H, W) -> (N, C_out, H, W)."""
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  N, Cin, H, W = x_NCHW.shape
  D, _, p, _ = w["x_embedder.proj.weight"].shape
  h, wd = H // p, W // p
  patches = x_NCHW.reshape(N, Cin, h, p, wd, p)
  x = np.einsum("ncaibj,dcij->nabd", patches, w["x_embedder.proj.weight"]).reshape(N, h * wd, D)
  x = x + w["x_embedder.proj.bias"] + ref_pos_embed(D, h, wd)[None]
  t_emb = linear(ref_timestep_embedding(t_steps), w["t_embedder.mlp.0.weight"],
                 w["t_embedder.mlp.0.bias"])
  t_emb = linear(silu(t_emb), w["t_embedder.mlp.2.weight"], w["t_embedder.mlp.2.bias"])
  c = t_emb + w["y_embedder.embedding_table.weight"][y]
  depth = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
  for i in range(depth):
    mod = linear(silu(c), w[f"blocks.{i}.adaLN_modulation.1.weight"],
                 w[f"blocks.{i}.adaLN_modulation.1.bias"])
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = np.split(mod, 6, axis=1)
    x = x + gate_msa[:, None] * ref_attention(modulate(layer_norm(x), shift_msa, scale_msa),
                                              w, i, heads)
    hid = gelu_tanh(linear(modulate(layer_norm(x), shift_mlp, scale_mlp),
                           w[f"blocks.{i}.mlp.fc1.weight"], w[f"blocks.{i}.mlp.fc1.bias"]))
    x = x + gate_mlp[:, None] * linear(hid, w[f"blocks.{i}.mlp.fc2.weight"],
                                       w[f"blocks.{i}.mlp.fc2.bias"])
  shift, scale = np.split(linear(silu(c), w["final_layer.adaLN_modulation.1.weight"],
                                 w["final_layer.adaLN_modulation.1.bias"]), 2, axis=1)
  x = linear(modulate(layer_norm(x), shift, scale), w["final_layer.linear.weight"],
             w["final_layer.linear.bias"])
  c_out = x.shape[-1] // (p * p)
  x = x.reshape(N, h, wd, p, p, c_out)
  return np.einsum("nhwpqc->nchpwq", x).reshape(N, c_out, h * p, wd * p)


def fake_state(seed, *, patch, hidden=32, depth=2, heads=2, num_classes=5, learn_sigma=True,
               input_size=16):
  """Random weights in the original layout, scaled so every branch matters."""
  rng = np.random.default_rng(seed)
  info = {"depth": depth, "hidden_size": hidden, "patch_size": patch, "in_channels": C,
          "learn_sigma": learn_sigma, "num_classes": num_classes, "input_size": input_size,
          "mlp_ratio": 4.0, "num_heads": heads}
  state = {}
  for key, shape in convert.expected_shapes(info).items():
    fan_in = np.prod(shape[1:]) if len(shape) > 1 else 10.0
    state[key] = (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)
  grid = input_size // patch
  state["pos_embed"] = ref_pos_embed(hidden, grid, grid)[None].astype(np.float32)
  return state, info


def converted(state, tmp_path, suffix, scan_layers=False):
  path = tmp_path / f"ckpt{suffix}"
  save_tensors(path, state)
  out_dir = tmp_path / "converted"
  convert.convert_file(path, out_dir, num_heads=2)
  params, info = convert.load_converted(out_dir)
  if scan_layers:
    params, info = convert.import_state(state, num_heads=2, scan_layers=True)
  return params, info


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("patch,learn_sigma,input_size,run_hw,suffix,scan", [
    (2, True, 8, (6, 10), ".npz", False),
    (4, False, 16, (8, 12), ".safetensors", False),
    (8, True, 16, (24, 8), ".npz", True),
])
def test_converted_model_matches_reference(tmp_path, patch, learn_sigma, input_size, run_hw,
                                           suffix, scan):
  """Square (the file's size) and non-square inputs, our time t for the original step n."""
  state, _ = fake_state(patch, patch=patch, learn_sigma=learn_sigma, input_size=input_size)
  params, info = converted(state, tmp_path, suffix, scan_layers=scan)
  assert info["learn_sigma"] == learn_sigma and info["patch_size"] == patch
  model = convert.make_model(info, scan_layers=scan)
  fn = jax.jit(model_fn(model, params))  # the model maps our t to the step (time_input)
  rng = np.random.default_rng(1)
  n = np.array([0, 999, 437, 12])
  y = np.array([0, 5, 3, 1])  # 5 = the null class
  for H, W in ((input_size, input_size), run_hw):
    x = rng.normal(size=(4, C, H, W))
    want = reference_forward(state, x, n, y, heads=2)
    got = np.asarray(fn(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32),
                        ddpm_step_to_t(n), {"label": jnp.asarray(y)}))
    assert got.shape == (4, H, W, 2 * C if learn_sigma else C)
    err = np.abs(got.transpose(0, 3, 1, 2) - want).max() / np.abs(want).max()
    assert err < 1e-5, (H, W, err)


def test_reference_is_sensitive_to_layout(tmp_path):
  """The equivalence above can fail: swapping q and k, or two modulation chunks, in the file
  changes the reference output far beyond the tolerance."""
  state, _ = fake_state(3, patch=2, input_size=8)
  x = np.random.default_rng(0).normal(size=(2, C, 8, 8))
  n, y = np.array([5, 700]), np.array([1, 2])
  base = reference_forward(state, x, n, y, heads=2)
  for key, chunks in (("blocks.0.attn.qkv.weight", 3), ("blocks.1.adaLN_modulation.1.weight", 6)):
    broken = dict(state)
    parts = np.split(state[key], chunks)
    broken[key] = np.concatenate([parts[1], parts[0], *parts[2:]])
    assert np.abs(reference_forward(broken, x, n, y, heads=2) - base).max() > 1e-3


def test_round_trip_export_import(tmp_path):
  state, _ = fake_state(4, patch=4, input_size=16)
  params, info = convert.import_state(state, num_heads=2)
  exported = convert.export_state(params, info)
  assert exported.keys() == state.keys()
  for k in state:
    np.testing.assert_array_equal(exported[k], state[k], err_msg=k)
  # and back through files, from a scanned tree
  scanned, _ = convert.import_state(exported, num_heads=2, scan_layers=True)
  np.testing.assert_array_equal(scanned["blocks"]["attn"]["qkv"]["kernel"][1],
                                params["blocks_1"]["attn"]["qkv"]["kernel"])
  convert.save_converted(tmp_path / "ckpt", scanned, info)
  convert.export_file(tmp_path / "ckpt", tmp_path / "back.safetensors")
  again, _ = convert.import_state(convert.load_tensors(tmp_path / "back.safetensors"),
                                  num_heads=2)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_convert_both_ways_through_files(tmp_path):
  """convert.convert, the call of `dit-jax convert`: import then export gives back the same
  tensors, and each says what it wrote."""
  state, _ = fake_state(5, patch=4, input_size=16)
  save_tensors(tmp_path / "orig.npz", state)
  line = convert.convert(tmp_path / "orig.npz", tmp_path / "ckpt", num_heads=2)
  params, info = convert.load_converted(tmp_path / "ckpt")
  assert line == f"wrote {tmp_path / 'ckpt'}: DiT {convert.describe(info)}"
  line = convert.convert(tmp_path / "ckpt", tmp_path / "back.npz", to_pytorch=True)
  assert line == f"wrote {tmp_path / 'back.npz'}: DiT {convert.describe(info)}"
  back = convert.load_tensors(tmp_path / "back.npz")
  assert back.keys() == state.keys()
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)


def _shape_state(info):
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in convert.expected_shapes(info).items()}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_layout(name):
  """Shapes only (jax.eval_shape): the preset is inferred from the file's shapes, and the
  converted tree is exactly the tree DiT initialises, at 256 (32x32 latents) and 512."""
  size = preset(name)
  for input_size in (32, 64) if name == "DiT-XL/2" else (32,):
    info = dict(size, in_channels=4, learn_sigma=True, num_classes=1000, input_size=input_size,
                mlp_ratio=4.0)
    shapes = _shape_state(info)
    inferred = convert.infer_info(shapes)
    assert inferred == info
    assert convert.preset_name(inferred) == name
    ours = jax.eval_shape(functools.partial(convert.state_to_params, info=inferred), shapes)
    model = convert.make_model(inferred)
    x = jnp.zeros((1, input_size, input_size, 4))
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, jnp.zeros(1),
                          {"label": jnp.zeros(1, jnp.int32)})
    want = flax.linen.unbox(init["params"])
    assert jax.tree.structure(ours) == jax.tree.structure(want)
    assert jax.tree.map(lambda a: a.shape, ours) == jax.tree.map(lambda a: a.shape, want)
    back = jax.eval_shape(functools.partial(convert.params_to_state, info=inferred), want)
    assert {k: v.shape for k, v in back.items()} == convert.expected_shapes(inferred)


def test_published_checkpoint_facts():
  """DiT-XL/2 has 675M parameters as in the paper (pos_embed excluded: it is a buffer)."""
  info = dict(preset("DiT-XL/2"), in_channels=4, learn_sigma=True, num_classes=1000,
              input_size=32, mlp_ratio=4.0)
  shapes = convert.expected_shapes(info)
  count = sum(math.prod(s) for k, s in shapes.items() if k != "pos_embed")
  assert round(count / 1e6) == 675


def test_pos_embed_table_matches_reference():
  from dit_jax.nn.posenc import sincos_2d
  np.testing.assert_allclose(sincos_2d(3, 5, 16), ref_pos_embed(16, 3, 5), atol=1e-6)


def test_validation_lists_every_problem():
  state, _ = fake_state(5, patch=2, input_size=8)
  del state["blocks.1.mlp.fc2.bias"]
  state["blocks.0.attn.q_norm.weight"] = np.zeros(16, np.float32)
  state["blocks.0.attn.proj.weight"] = np.zeros((32, 16), np.float32)
  with pytest.raises(ValueError) as err:
    convert.import_state(state, num_heads=2)
  message = str(err.value)
  for part in ("missing keys (1): blocks.1.mlp.fc2.bias",
               "unexpected keys (1): blocks.0.attn.q_norm.weight",
               "blocks.0.attn.proj.weight: file (32, 16), expected (32, 32)"):
    assert part in message


def test_other_errors_are_clear():
  state, _ = fake_state(6, patch=2, input_size=8)
  swapped = dict(state, pos_embed=np.roll(state["pos_embed"], 16, axis=-1))  # rows first
  with pytest.raises(ValueError, match="pos_embed differs from the 2D sin-cos table"):
    convert.import_state(swapped, num_heads=2)
  with pytest.raises(ValueError, match="head count is unknown: pass num_heads"):
    convert.infer_info(state)  # hidden 32 is no preset
  with pytest.raises(ValueError, match="--model DiT-S/2 is depth=12"):
    convert.import_state(state, model="DiT-S/2")
  with pytest.raises(ValueError, match="no 'x_embedder.proj.weight'"):
    convert.import_state({"model.diffusion_model.foo": np.zeros(1)})


def test_pt_without_torch_says_how(tmp_path):
  try:
    import torch  # noqa: F401
    pytest.skip("torch is installed")
  except ImportError:
    pass
  (tmp_path / "DiT-XL-2-256x256.pt").write_bytes(b"not read")
  with pytest.raises(ImportError, match="needs PyTorch"):
    convert.convert_file(tmp_path / "DiT-XL-2-256x256.pt", tmp_path / "out")


def test_converted_fields_build_the_published_design():
  state, _ = fake_state(7, patch=2, input_size=8)
  _, info = convert.import_state(state, num_heads=4)
  model = convert.make_model(info)
  assert isinstance(model, DiT)
  assert (model.time_scale, model.num_heads, model.conditioning) == (1.0, 4, "adaln_zero")
  assert info["time_input"] == "ddpm_step" and info["model"] is None


def original_sampler_latents(params, info, labels, rng, *, steps, cfg_scale, guide_channels):
  """The DiT sample script's loop as dit_jax ran it before converted models went through
  ImageSampler: ancestral DDPM with the learned variance on the respaced chain, guided."""
  from dit_jax.flow.paths import VPPath
  from dit_jax.flow.samplers import respaced_grid, sample_ddpm
  model = convert.make_model(info)
  noise_rng, step_rng = jax.random.split(rng)
  x0 = jax.random.normal(noise_rng, (len(labels), info["input_size"], info["input_size"],
                                     info["in_channels"]), jnp.float32)
  cond = {"label": jnp.asarray(labels, jnp.int32)}
  path = VPPath(model.num_ddpm_steps)
  return np.asarray(sample_ddpm(
      model_fn(model, params), step_rng, x0, cond, respaced_grid(steps, path.num_steps),
      path=path, null_cond=model.null_condition(cond), cfg_scale=cfg_scale,
      learned_variance=bool(info["learn_sigma"]), guide_channels=guide_channels))


def test_cli_convert_sample_export(tmp_path):
  """`dit-jax convert` both ways and `dit-jax sample --converted` (latents, no VAE): the CLI
  writes what the original respaced loop computes, and the export equals the original file."""
  from dit_jax import cli
  state, _ = fake_state(8, patch=4, input_size=8)
  save_tensors(tmp_path / "orig.npz", state)
  ckpt = tmp_path / "ckpt"
  cli.main(["convert", "--from", "pytorch", "--in", str(tmp_path / "orig.npz"), "--out",
            str(ckpt), "--num-heads", "2"])
  cli.main(["convert", "--to", "pytorch", "--in", str(ckpt), "--out",
            str(tmp_path / "back.safetensors")])
  back = convert.load_tensors(tmp_path / "back.safetensors")
  assert all(np.array_equal(back[k], state[k]) for k in state)
  out = tmp_path / "latents.npz"
  cli.main(["sample", "--converted", str(ckpt), "--labels", "1,4", "--steps", "3",
            "--cfg-scale", "2.0", "--guide-channels", "3", "--seed", "5", "--out", str(out)])
  params, info = convert.load_converted(ckpt)
  assert info["learn_sigma"]
  want = original_sampler_latents(params, info, [1, 4], jax.random.PRNGKey(5), steps=3,
                                  cfg_scale=2.0, guide_channels=3)
  with np.load(out) as f:
    np.testing.assert_array_equal(f["latents"], want)
    assert f["latents"].shape == (2, 8, 8, C) and np.isfinite(f["latents"]).all()
  with pytest.raises(SystemExit, match="exactly one of --from pytorch"):
    cli.main(["convert", "--in", str(ckpt), "--out", str(tmp_path / "x")])


def test_decode_latents_unscales_before_the_vae(tmp_path):
  """Samples are decoded as vae.decode(z / 0.18215), clipped to [-1, 1] as latent runs are,
  with a diffusers-layout VAE folder."""
  from dit_jax.convert.vae import save_vae
  from dit_jax.sampling.latents import latent_decoder
  from dit_jax.models.vae import AutoencoderKL
  vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, C))
  shapes = jax.eval_shape(vae.init, jax.random.PRNGKey(1), jnp.zeros((1, 2, 2, 3)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), jnp.float32),
                        flax.linen.unbox(shapes))
  save_vae(tmp_path / "vae", vae, params)
  got = latent_decoder(tmp_path / "vae", batch_size=3)(z)
  decode = jax.jit(lambda z: jnp.clip(vae.apply({"params": params}, z, method=vae.decode),
                                      -1, 1))
  want = decode(z / 0.18215)
  assert 0.05 < np.mean(np.abs(np.asarray(want)) < 1)  # not all clipped: the values count
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, decode(z), atol=1e-3)


def test_cli_convert_sample_export_in_a_bucket(tmp_path, gcs_bucket, monkeypatch):
  """`dit-jax convert` both ways and `sample --converted` with every file in a bucket: the
  same files as locally (arrays of the .npz files, bytes of the others); no local `gs:`."""
  from dit_jax import cli, paths, state_files
  monkeypatch.chdir(tmp_path)
  state, _ = fake_state(8, patch=4, input_size=8)
  for root in (str(tmp_path / "local"), gcs_bucket):
    save_tensors(f"{root}/orig.safetensors", state)
    cli.main(["convert", "--from", "pytorch", "--in", f"{root}/orig.safetensors", "--out",
              f"{root}/ckpt", "--num-heads", "2"])
    cli.main(["convert", "--to", "pytorch", "--in", f"{root}/ckpt", "--out", f"{root}/back.npz"])
    cli.main(["sample", "--converted", f"{root}/ckpt", "--labels", "1", "--steps", "2",
              "--out", f"{root}/latents.npz"])
  for name in ("orig.safetensors", "ckpt/dit.json"):
    assert state_files.read_bytes(f"{gcs_bucket}/{name}") == (tmp_path / "local" / name
                                                               ).read_bytes()
  for name in ("ckpt/params.npz", "back.npz", "latents.npz"):
    with paths.open_read(f"{gcs_bucket}/{name}") as f, np.load(f) as remote, np.load(
        tmp_path / "local" / name) as local:
      assert sorted(remote.files) == sorted(local.files)
      for key in local.files:
        np.testing.assert_array_equal(remote[key], local[key])
  assert [p.name for p in tmp_path.iterdir()] == ["local"]
