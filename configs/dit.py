"""DiT on 256x256 images seen as 32x32x4 VAE latents (the DiT paper's ImageNet setting).

The argument picks the model preset:
    dit-jax flops --config configs/dit.py:DiT-B/4 --config.model.conditioning=cross_attn
"""
import ml_collections


def get_config(arg: str = "DiT-XL/2") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      name=arg,
      num_classes=1000,
      class_dropout_prob=0.1,
      learn_sigma=True,
      conditioning="adaln_zero",   # adaln_zero | adaln | cross_attn | in_context
      attention_backend="auto",    # auto | xla | jax | cudnn | splash
      dtype="bfloat16",            # compute dtype
      param_dtype="float32",
      scan_layers=True,
      remat_policy="none",         # none | full | dots | save_block_outputs
  ))
  config.data = ml_collections.ConfigDict(dict(
      image_size=256,        # pixels
      latent_downsample=8,   # VAE factor: the model sees image_size / 8 (1 in pixel space)
      channels=4,            # channels the model sees (VAE latent channels)
  ))
  return config
