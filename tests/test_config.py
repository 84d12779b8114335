import jax.numpy as jnp
import pytest

from dit_jax.config import apply_overrides, load_config
from dit_jax.models import create_model


def test_dit_config_builds_the_named_model():
  config = load_config("configs/dit.py:DiT-B/4")
  model = create_model(config.model)
  assert (model.depth, model.hidden_size, model.num_heads, model.patch_size) == (12, 768, 12, 4)
  assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32


def test_overrides_keep_field_types():
  config = load_config("configs/dit.py")
  apply_overrides(config, ["model.scan_layers=true", "model.class_dropout_prob=0.2",
                           "model.num_classes=10", "model.conditioning=in_context"])
  assert config.model.scan_layers is True and config.model.class_dropout_prob == 0.2
  assert config.model.num_classes == 10 and config.model.conditioning == "in_context"
  with pytest.raises(ValueError, match="model.num_classes='ten'"):
    apply_overrides(config, ["model.num_classes=ten"])
  with pytest.raises(ValueError, match="no section 'optimizer'"):
    apply_overrides(config, ["optimizer.lr=1"])


def test_unknown_model_fields_and_names():
  config = load_config("configs/dit.py")
  config.model.nonsense = 1
  with pytest.raises(ValueError, match=r"fields \['nonsense'\] that DiT does not take"):
    create_model(config.model)
  with pytest.raises(ValueError, match="config.model.name='NoSuchNet'"):
    create_model({"name": "NoSuchNet"})
  with pytest.raises(FileNotFoundError, match="config file 'nope.py' not found"):
    load_config("nope.py:x")
