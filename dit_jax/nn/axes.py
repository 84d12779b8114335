"""Logical axis names, written once.

Parameters and activations are annotated with these names; a sharding config maps them to mesh
axes (`data`, `fsdp`, `tensor`). Models never name a mesh axis.
"""

# Parameter axes.
EMBED = "embed"            # model width D
MLP = "mlp"                # MLP hidden width F, and other wide outputs split by tensor
                           # parallelism (adaLN modulation outputs)
HEADS = "heads"            # attention heads N
KV = "kv"                  # per-head width H
QKV = "qkv"                # the 3 of a fused q/k/v projection (never sharded)
MODULATION = "modulation"  # the chunks of an adaLN modulation (shift, scale, gate, ...)
VOCAB = "vocab"            # rows of an embedding table (classes, tokens)
PATCH = "patch"            # flattened patch p*p*C, input of the patch embedding
FREQ = "freq"              # sinusoidal frequency features of the timestep embedding
LAYERS = "layers"          # stacked layer axis under scan_layers

# Activation axes.
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
