"""diffusers AutoencoderKL layout <-> flax VAE: an independent NCHW numpy forward of a fake
diffusers state dict must match the imported flax model; round trips; error listings."""
import json

import jax
import numpy as np
import pytest

from dit_jax.convert import vae as convert
from dit_jax.models.vae import AutoencoderKL

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=2,
            norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1)


# ---- an independent reference in PyTorch's conventions: NCHW, OIHW, Linear (out, in) ----

def np_conv(x, sd, key, stride=1, pad=None):
  w, b = sd[key + ".weight"], sd[key + ".bias"]
  k = w.shape[-1]
  p = k // 2
  top, bottom, left, right = pad if pad is not None else (p, p, p, p)
  x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
  N, _, H, W = x.shape
  Ho, Wo = (H - k) // stride + 1, (W - k) // stride + 1
  out = np.zeros((N, w.shape[0], Ho, Wo))
  for i in range(k):
    for j in range(k):
      patch = x[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out + b[None, :, None, None]


def np_group_norm(x, sd, key, groups):
  N, C, H, W = x.shape
  g = x.reshape(N, groups, -1)
  g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)
  x = g.reshape(N, C, H, W)
  return x * sd[key + ".weight"][None, :, None, None] + sd[key + ".bias"][None, :, None, None]


def silu(x):
  return x / (1 + np.exp(-x))


def np_resnet(x, sd, key, groups):
  h = np_conv(silu(np_group_norm(x, sd, key + ".norm1", groups)), sd, key + ".conv1")
  h = np_conv(silu(np_group_norm(h, sd, key + ".norm2", groups)), sd, key + ".conv2")
  if key + ".conv_shortcut.weight" in sd:
    x = np_conv(x, sd, key + ".conv_shortcut")
  return x + h


def np_attention(x, sd, key, groups):
  N, C, H, W = x.shape
  h = np_group_norm(x, sd, key + ".group_norm", groups).reshape(N, C, H * W).transpose(0, 2, 1)
  lin = lambda v, name: v @ sd[f"{key}.{name}.weight"].T + sd[f"{key}.{name}.bias"]
  q, k, v = lin(h, "to_q"), lin(h, "to_k"), lin(h, "to_v")
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(C)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = lin(weights @ v, "to_out.0")
  return x + out.transpose(0, 2, 1).reshape(N, C, H, W)


def np_mid(x, sd, key, groups):
  x = np_resnet(x, sd, key + ".resnets.0", groups)
  x = np_attention(x, sd, key + ".attentions.0", groups)
  return np_resnet(x, sd, key + ".resnets.1", groups)


def np_encode(x, sd, arch):
  g, blocks = arch["norm_num_groups"], arch["block_out_channels"]
  h = np_conv(x, sd, "encoder.conv_in")
  for i in range(len(blocks)):
    for j in range(arch["layers_per_block"]):
      h = np_resnet(h, sd, f"encoder.down_blocks.{i}.resnets.{j}", g)
    if i < len(blocks) - 1:
      h = np_conv(h, sd, f"encoder.down_blocks.{i}.downsamplers.0.conv", 2, (0, 1, 0, 1))
  h = np_mid(h, sd, "encoder.mid_block", g)
  h = np_conv(silu(np_group_norm(h, sd, "encoder.conv_norm_out", g)), sd, "encoder.conv_out")
  return np_conv(h, sd, "quant_conv")


def np_decode(z, sd, arch):
  g, blocks = arch["norm_num_groups"], arch["block_out_channels"]
  h = np_conv(np_conv(z, sd, "post_quant_conv"), sd, "decoder.conv_in")
  h = np_mid(h, sd, "decoder.mid_block", g)
  for i in range(len(blocks)):
    for j in range(arch["layers_per_block"] + 1):
      h = np_resnet(h, sd, f"decoder.up_blocks.{i}.resnets.{j}", g)
    if i < len(blocks) - 1:
      h = h.repeat(2, axis=2).repeat(2, axis=3)
      h = np_conv(h, sd, f"decoder.up_blocks.{i}.upsamplers.0.conv")
  return np_conv(silu(np_group_norm(h, sd, "decoder.conv_norm_out", g)), sd, "decoder.conv_out")


def fake_state_dict(vae, seed=0):
  """Random weights with the names and (PyTorch) shapes diffusers would write."""
  rng = np.random.default_rng(seed)
  shapes = convert.diffusers_shapes(vae)
  out = {}
  for key, shape in shapes.items():
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.3
    base = 1.0 if "norm" in key and key.endswith("weight") else 0.0  # GroupNorm scales ~1
    out[key] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def tiny():
  vae = AutoencoderKL(**TINY)
  return vae, fake_state_dict(vae)


def test_keys_are_the_diffusers_names(tiny):
  _, sd = tiny
  for key, shape in [("encoder.conv_in.weight", (8, 3, 3, 3)),
                     ("encoder.down_blocks.0.downsamplers.0.conv.weight", (8, 8, 3, 3)),
                     ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", (16, 8, 1, 1)),
                     ("encoder.mid_block.attentions.0.to_out.0.weight", (16, 16)),
                     ("encoder.mid_block.attentions.0.group_norm.bias", (16,)),
                     ("encoder.conv_out.weight", (4, 16, 3, 3)),
                     ("quant_conv.weight", (4, 4, 1, 1)), ("post_quant_conv.bias", (2,)),
                     ("decoder.up_blocks.0.resnets.1.norm2.weight", (16,)),
                     ("decoder.up_blocks.0.upsamplers.0.conv.weight", (16, 16, 3, 3)),
                     ("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", (8, 16, 1, 1)),
                     ("decoder.conv_out.weight", (3, 8, 3, 3))]:
    assert sd[key].shape == shape, key
  assert "decoder.up_blocks.0.resnets.2.conv1.weight" not in sd  # layers_per_block + 1 = 2
  assert "decoder.up_blocks.1.upsamplers.0.conv.weight" not in sd  # last block: no resample
  assert "encoder.down_blocks.0.resnets.0.conv_shortcut.weight" not in sd  # same width


def test_imported_model_matches_numpy_reference(tiny):
  vae, sd = tiny
  params = convert.import_params(sd, vae)
  x_NCHW = np.random.default_rng(1).uniform(-1, 1, (2, 3, 8, 8))
  moments = np_encode(x_NCHW, {k: v.astype(np.float64) for k, v in sd.items()}, TINY)
  dist = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=vae.encode))(
      params, x_NCHW.transpose(0, 2, 3, 1).astype(np.float32))
  np.testing.assert_allclose(dist.mean, moments[:, :2].transpose(0, 2, 3, 1), atol=2e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(dist.logvar, moments[:, 2:].transpose(0, 2, 3, 1), atol=2e-4,
                             rtol=1e-4)
  z_NCHW = np.random.default_rng(2).standard_normal((2, 2, 4, 4))
  want = np_decode(z_NCHW, {k: v.astype(np.float64) for k, v in sd.items()}, TINY)
  got = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=vae.decode))(
      params, z_NCHW.transpose(0, 2, 3, 1).astype(np.float32))
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=5e-4, rtol=1e-4)


def test_export_import_round_trip_is_exact(tiny, tmp_path):
  vae, sd = tiny
  params = convert.import_params(sd, vae)
  back = convert.export_params(params)
  assert sorted(back) == sorted(sd)
  for key in sd:
    np.testing.assert_array_equal(back[key], sd[key])
  convert.save_vae(tmp_path / "vae", vae, params)
  config = json.loads((tmp_path / "vae" / "config.json").read_text())
  assert config["latent_channels"] == 2 and config["shift_factor"] == 0.1
  loaded_vae, loaded = convert.load_vae(tmp_path)  # finds the vae/ subfolder
  assert loaded_vae == vae
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_legacy_attention_names_are_accepted(tiny):
  vae, sd = tiny
  legacy = {}
  for key, value in sd.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    legacy[key] = value[:, :, None, None] if value.ndim == 2 else value  # as 1x1 convs
  a = convert.import_params(sd, vae)
  b = convert.import_params(legacy, vae)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_errors_list_missing_unexpected_and_shape(tiny):
  vae, sd = tiny
  bad = dict(sd)
  del bad["encoder.conv_in.bias"]
  bad["encoder.extra.weight"] = np.zeros(3)
  bad["decoder.conv_out.weight"] = np.zeros((3, 8, 1, 1))
  with pytest.raises(ValueError) as e:
    convert.import_params(bad, vae)
  text = str(e.value)
  assert "missing (1): encoder.conv_in.bias" in text
  assert "unexpected (1): encoder.extra.weight" in text
  assert "decoder.conv_out.weight: file (3, 8, 1, 1), model (3, 8, 3, 3)" in text


def test_sd3_layout_has_no_quant_convs_and_config_round_trips():
  config = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "latent_channels": 16, "scaling_factor": 1.5305,
            "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu"}
  vae = convert.vae_from_config(config)
  assert (vae.latent_channels, vae.use_quant_conv, vae.shift_factor) == (16, False, 0.0609)
  assert convert.vae_from_config(convert.diffusers_config(vae)) == vae
  with pytest.raises(ValueError, match="down_block_types"):
    convert.vae_from_config(dict(config, down_block_types=["AttnDownEncoderBlock2D"] * 4))


def test_missing_folder_says_what_to_put_there(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert.load_vae(tmp_path)
