"""dit_jax: diffusion and flow-matching image architectures in JAX/Flax.

    from dit_jax import dit
    model = dit("DiT-XL/2")
"""
from dit_jax.models import create_model
from dit_jax.models.dit import DiT, dit

__version__ = "0.1.0"
__all__ = ["DiT", "create_model", "dit"]
