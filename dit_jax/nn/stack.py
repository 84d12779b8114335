"""A stack of identical blocks, unrolled or scanned, with an optional remat policy.

    run = layer_stack(DiTBlock, block_kwargs, depth, scan=True, remat_policy="dots",
                      name="blocks")
    x = run(x, c, cond, positions, rotate_mask)

Unrolled, layer i is the module `{name}_{i}`; scanned, one module `{name}` whose parameters
carry a leading layer axis of length `depth` with the logical name axes.LAYERS, so one block is
compiled and the layer axis can be sharded. The carry is the block's first argument: one array
or a tuple of arrays that the block takes as separate arguments and returns as a tuple (e.g.
the image and text streams); the other arguments are the same for every layer. Scanned, the
policy "none" means "dots" (see SCAN_NONE_POLICY): scanning never costs memory.
"""
import functools

import flax.linen as nn
import jax

from dit_jax.errors import InputError
from dit_jax.nn import axes

# A scanned stack without a policy would save every intermediate of the block for the
# backward pass as a stacked (depth, ...) buffer, the float32 norm and modulation ones
# included, and XLA cannot rematerialise across the loop boundary as it does between
# unrolled layers: DiT-XL/2 needed twice the temporaries scanned (14.4 vs 7.1 GiB per v5e
# chip). So "none" under scan keeps the matmul outputs and recomputes only elementwise work,
# which is what XLA itself keeps of unrolled layers (experiments/tpu_aot.py measures both).
SCAN_NONE_POLICY = "dots"

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_block_outputs": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


def check_remat_policy(remat_policy: str):
  if remat_policy not in REMAT_POLICIES:
    raise InputError(f"remat_policy={remat_policy!r} is not one of {tuple(REMAT_POLICIES)}")


def _call(block, carry, args):
  return block(*carry, *args) if isinstance(carry, tuple) else block(carry, *args)


@functools.lru_cache(maxsize=None)
def _scan_body(block_cls):
  """block_cls with the (carry, *args) -> (carry, None) signature nn.scan expects; a subclass,
  so parameter names are those of block_cls."""
  def __call__(self, carry, *args):
    return _call(functools.partial(block_cls.__call__, self), carry, args), None
  return type(f"Scanned{block_cls.__name__}", (block_cls,), {"__call__": __call__})


def layer_stack(block_cls, block_kwargs: dict, depth: int, *, scan: bool, remat_policy: str,
                name: str, start: int = 0):
  """A function (carry, *args) -> carry applying `depth` blocks (none: the identity); call it
  inside a compact method of the parent module (see the module docstring for names and
  layouts). Unrolled layers are numbered from `start`."""
  check_remat_policy(remat_policy)
  block = _scan_body(block_cls) if scan else block_cls
  if scan and remat_policy == "none":
    remat_policy = SCAN_NONE_POLICY
  if remat_policy != "none":
    block = nn.remat(block, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan)

  def run(carry, *args):
    if not scan or not depth:
      for i in range(start, start + depth):
        carry = _call(block(name=f"{name}_{i}", **block_kwargs), carry, args)
      return carry
    stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(nn.broadcast,) * len(args), length=depth,
                    metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    carry, _ = stack(name=name, **block_kwargs)(carry, *args)
    return carry
  return run
