"""Analytic forward multiply-adds and parameters of each family, pure functions of a model's
fields (the `forward_flops` / `param_counts` hooks of the model contract call these), with
XLA's cost analysis as a cross-check, and the DiT paper's numbers.

Convention (the DiT paper's): forward pass of one example, one multiply-add counts as ONE flop;
only matrix products are counted (linear layers, convolutions as out_pixels * k * k * C_in *
C_out, attention scores q k^T and the weighted sum of values). Norms, activations, softmax and
additions are left out: they are O(T D) per layer, a fraction of a percent of the total for the
paper's models.

XLA's `cost_analysis()["flops"]` counts a multiply-add as TWO flops and also counts every
elementwise operation, so `xla_flops / 2` is slightly above the analytic number (0.3% for
DiT-XL/2, about 1% for the smallest models).

Symbols: T image tokens, S condition tokens, D width, F MLP width, P = p*p*C patch features,
L depth; U-Net: h, w the feature map of a level, C its channels, E the embedding width.
"""
import dataclasses

import jax

from dit_jax.models.contract import example_inputs

FREQUENCY_DIM = 256  # sinusoidal features of the timestep embedder
UNET_COMPONENTS = ("embed", "res", "attention", "resample", "final")

# Forward Gflops at 256x256 (32x32x4 latents) from Table 4 of the DiT paper, and parameters
# (millions) from its Table 1; the lecture's patch-4 column rounds these to one decimal.
PAPER_GFLOPS_256 = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06,
    "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}
PAPER_PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


# DiT (dit_jax.models.dit).

def _adaln_chunks(model) -> tuple[int, int]:
  """Modulation outputs per block and in the final layer (in units of D)."""
  return {"adaln_zero": (6, 2), "adaln": (4, 2)}.get(model.conditioning, (0, 0))


def dit_flops(model, height: int, width: int, channels: int) -> dict[str, int]:
  """Forward multiply-adds per component of a DiT for one (height, width, channels) input."""
  model.check_config(height, width)
  D, L, p = model.hidden_size, model.depth, model.patch_size
  F = int(D * model.mlp_ratio)
  T = (height // p) * (width // p)
  S = 2 if model.num_classes else 1  # condition tokens: t, and the label
  P = p * p * channels
  T_blocks = T + S if model.conditioning == "in_context" else T
  attention = 4 * T_blocks * D * D + 2 * T_blocks * T_blocks * D  # qkv + out; scores + values
  if model.conditioning == "cross_attn":
    attention += 2 * T * D * D + 2 * S * D * D + 2 * T * S * D   # q + out, k/v, scores + values
  per_block, final = _adaln_chunks(model)
  return {
      "embed": T * P * D + FREQUENCY_DIM * D + D * D,
      "attention": L * attention,
      "mlp": L * 2 * T_blocks * D * F,
      "adaln": (L * per_block + final) * D * D,
      "norm": 0,
      "final": T * D * p * p * model.output_channels(channels),
  }


def dit_params(model, channels: int) -> dict[str, int]:
  """Trainable parameters per component (the fixed sin-cos table is not a parameter)."""
  D, L, p = model.hidden_size, model.depth, model.patch_size
  F = int(D * model.mlp_ratio)
  P = p * p * channels
  labels = (model.num_classes + 1) * D if model.num_classes else 0
  attention = 4 * D * D + 4 * D
  norms = 0
  if model.conditioning == "cross_attn":
    attention += 4 * D * D + 4 * D
    norms = L * 3 * 2 * D + 2 * D
  elif model.conditioning == "in_context":
    norms = L * 2 * 2 * D + 2 * D
  per_block, final = _adaln_chunks(model)
  out = p * p * model.output_channels(channels)
  if model.posenc == "rope_mixed":  # learned (row, col) frequency per head and pair
    attention += D
  return {
      "embed": P * D + D + FREQUENCY_DIM * D + D + D * D + D + labels,
      "attention": L * attention,
      "mlp": L * (2 * D * F + F + D),
      "adaln": L * per_block * (D * D + D) + final * (D * D + D),
      "norm": norms,
      "final": D * out + out,
  }


# U-Net (dit_jax.models.unet): `steps` is its `layout(model)`.

def _unet_attention(model, step, T: int, S: int) -> tuple[int, int]:
  """(multiply-adds, parameters) of one attention block on T pixels of C channels."""
  C, E = step.out_channels, model.emb_dim
  flops = 4 * T * C * C + 2 * T * T * C               # qkv + out; scores + values
  params = 4 * C * C + 4 * C + 2 * C                  # + GroupNorm
  if model.uses_tokens:
    flops += 2 * T * C * C + 8 * T * C * C            # proj in/out; MLP
    flops += 2 * T * C * C + 2 * S * E * C + 2 * T * S * C  # cross: q, out; k, v; scores, values
    params += 2 * (C * C + C) + (8 * C * C + 5 * C) + 3 * 2 * C  # proj, MLP, 3 LayerNorms
    params += 2 * C * C + 2 * E * C + 4 * C           # cross q, out, kv
  return flops, params


def _unet_res(model, step, hw: int) -> tuple[int, int]:
  """(multiply-adds, parameters) of one residual block at hw pixels."""
  c_in, C, E = step.in_channels, step.out_channels, model.emb_dim
  emb = {"add": C, "scale_shift": 2 * C, "cross_attn": 0}[model.conditioning]
  flops = hw * 9 * (c_in * C + C * C) + E * emb
  params = 9 * (c_in * C + C * C) + 2 * C + E * emb + emb + 2 * (c_in + C)  # convs, emb, norms
  if c_in != C:
    flops += hw * c_in * C
    params += c_in * C + C
  return flops, params


def unet_counts(model, steps, height: int, width: int, channels: int,
                text_tokens: int) -> tuple[dict, dict]:
  """Forward multiply-adds and parameters per component of a U-Net for one input."""
  model.check_config(height, width)
  E, c0 = model.emb_dim, model.base_channels * model.channel_mult[0]
  S = (2 if model.num_classes else 1) if model.conditioning == "cross_attn" else 0
  S += text_tokens if model.text_dim else 0
  flops = dict.fromkeys(UNET_COMPONENTS, 0)
  params = dict.fromkeys(UNET_COMPONENTS, 0)
  flops["embed"] = FREQUENCY_DIM * E + E * E + (text_tokens * model.text_dim * E
                                                if model.text_dim else 0)
  params["embed"] = (FREQUENCY_DIM * E + E + E * E + E
                     + ((model.num_classes + 1) * E if model.num_classes else 0)
                     + ((model.text_dim + 1) * E if model.text_dim else 0))
  hw = lambda level: (height >> level) * (width >> level)
  for step in steps:
    C = step.out_channels
    if step.op == "res":
      f, p = _unet_res(model, step, hw(step.level))
    elif step.op == "attn":
      f, p = _unet_attention(model, step, hw(step.level), S)
    elif step.op == "down":  # a strided 3x3 conv, or pooling (no multiply-adds, no params)
      conv = model.downsample == "conv"
      f, p = (hw(step.level + 1) * 9 * C * C, 9 * C * C + C) if conv else (0, 0)
    elif model.upsample == "transpose":  # 2x2 kernel, stride 2: one tap per output pixel
      f, p = hw(step.level - 1) * C * C, 4 * C * C + C
    else:                                # nearest resize, then a 3x3 conv
      f, p = hw(step.level - 1) * 9 * C * C, 9 * C * C + C
    component = {"res": "res", "attn": "attention"}.get(step.op, "resample")
    flops[component] += f
    params[component] += p
  c_out = model.output_channels(channels)
  flops["final"] = hw(0) * 9 * channels * c0 + hw(0) * c0 * c_out  # conv_in 3x3, conv_out 1x1
  params["final"] = 9 * channels * c0 + c0 + 2 * c0 + c0 * c_out + c_out
  return flops, params


# Text-conditioned models (dit_jax.models.mmdit). T image tokens (plus conditioning-image
# tokens), S text tokens (model.text_length), L = S + T, K the text feature width entering the
# model (text_width for the trained encoder, else context_dim).

def _text_encoder_flops(model) -> int:
  """The small trained text encoder (text_source='tokens'); 0 for precomputed embeddings."""
  if model.text_source != "tokens":
    return 0
  S, Dt = model.text_length, model.text_width
  F = int(Dt * model.mlp_ratio)
  return model.text_depth * (4 * S * Dt * Dt + 2 * S * S * Dt + 2 * S * Dt * F)


def _text_model_counts(model, height, width, channels, per_token_text: bool, T: int,
                       attention: int, mlp: int, adaln: int) -> dict[str, int]:
  """The parts every text model shares: encoder, embeddings, final layer."""
  D, p = model.hidden_size, model.patch_size
  S = model.text_length
  K = model.text_width if model.text_source == "tokens" else model.context_dim
  pooled_K = model.text_width if model.text_source == "tokens" else model.pooled_dim
  embed = T * p * p * channels * D + FREQUENCY_DIM * D + D * D + per_token_text * S * K * D
  if model.use_pooled and pooled_K:
    embed += pooled_K * D + D * D
  if model.guidance_embed:
    embed += FREQUENCY_DIM * D + D * D
  T_out = (height // p) * (width // p)
  return {"text": _text_encoder_flops(model), "embed": embed, "attention": attention,
          "mlp": mlp, "adaln": adaln + 2 * D * D, "norm": 0,
          "final": T_out * D * p * p * model.output_channels(channels)}


def mmdit_flops(model, height: int, width: int, channels: int) -> dict[str, int]:
  """Forward multiply-adds per component of an MMDiT for one example; 'text' is the trained
  text encoder, 'embed' the patch, time, pooled, guidance and context embeddings."""
  model.check_config(height, width)
  D, p = model.hidden_size, model.patch_size
  F = int(D * model.mlp_ratio)
  T = (height // p) * (width // p)
  if model.image_conditioning:
    h, w, _ = model.cond_image_shape
    T += (h // p) * (w // p)
  S = model.text_length
  L = S + T
  attention = mlp = adaln = 0
  for i in range(model.depth_double):
    pre_only = model.reduce_last_text and not model.depth_single and i == model.depth_double - 1
    attention += 4 * T * D * D + (3 if pre_only else 4) * S * D * D + 2 * L * L * D
    mlp += 2 * T * D * F + (0 if pre_only else 2 * S * D * F)
    adaln += (6 + (2 if pre_only else 6)) * D * D
  attention += model.depth_single * (4 * L * D * D + 2 * L * L * D)
  mlp += model.depth_single * 2 * L * D * F
  adaln += model.depth_single * (3 if model.single_block == "parallel" else 6) * D * D
  return _text_model_counts(model, height, width, channels, True, T, attention, mlp, adaln)


def text_dit_flops(model, height: int, width: int, channels: int) -> dict[str, int]:
  """Forward multiply-adds per component of a TextDiT (pooled adaLN or cross-attention)."""
  model.check_config(height, width)
  D, p = model.hidden_size, model.patch_size
  F = int(D * model.mlp_ratio)
  T = (height // p) * (width // p)
  S = model.text_length
  cross = model.text_conditioning == "cross_attn"
  per_block = 4 * T * D * D + 2 * T * T * D
  if cross:
    per_block += 2 * T * D * D + 2 * S * D * D + 2 * T * S * D
  return _text_model_counts(model, height, width, channels, cross, T, model.depth * per_block,
                            model.depth * 2 * T * D * F, model.depth * 6 * D * D)


# Any model, through the contract: the real module's parameters and XLA's count.

def count_params(model, height: int, width: int, channels: int) -> int:
  """Parameters of the real module, from jax.eval_shape (no memory is allocated)."""
  x, t, cond = example_inputs(model, (height, width, channels))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def xla_flops(model, height: int, width: int, channels: int) -> float:
  """XLA's flop count of the compiled forward of one example (multiply-add = 2 flops).

  Layers are unrolled here because XLA's cost analysis counts a scanned body only once.
  """
  fields = {f.name for f in dataclasses.fields(model)}
  unrolled = {k: v for k, v in (("scan_layers", False), ("remat_policy", "none")) if k in fields}
  model = dataclasses.replace(model, **unrolled)
  x, t, cond = example_inputs(model, (height, width, channels))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, cond)
  cost = jax.jit(model.apply).lower(variables, x, t, cond).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
    cost = cost[0]
  return float(cost["flops"])
