"""Building blocks: pure functions for the math and small linen modules."""
from dit_jax.nn.adaln import Modulation, gated_residual, layer_norm, modulate
from dit_jax.nn.attention import Attention, attend, attention, joint_attention
from dit_jax.nn.embed import (LabelEmbedder, TimestepEmbedder, patchify, timestep_embedding,
                              unpatchify)
from dit_jax.nn.mlp import Mlp
from dit_jax.nn.posenc import sincos_1d, sincos_2d
from dit_jax.nn.stack import REMAT_POLICIES, layer_stack

__all__ = ["Attention", "LabelEmbedder", "Mlp", "Modulation", "REMAT_POLICIES",
           "TimestepEmbedder", "attend", "attention", "gated_residual", "joint_attention",
           "layer_norm", "layer_stack", "modulate", "patchify", "sincos_1d", "sincos_2d",
           "timestep_embedding", "unpatchify"]
