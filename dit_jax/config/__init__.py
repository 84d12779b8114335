"""The config of a run: one schema of every field with its default (`schema.py`), loading a
config file with `--config.a.b=value` overrides (`files.py`), and the checks of a config,
including which fields may change when a run resumes (`checks.py`).

    from dit_jax.config import base_config, load_config, model_section
    config = load_config("configs/dit.py:DiT-B/4")          # get_config("DiT-B/4"), validated

Imports: flow and models (a model section holds the fields of its family); data only to
read a data set's image shape.
"""
from dit_jax.config.checks import ABSENT, RESUMABLE_FIELDS, meaning_changes, validate, with_defaults
from dit_jax.config.files import (apply_overrides, config_code, config_module, load_config,
                                  set_fields)
from dit_jax.config.schema import (EVALUATORS, OPTIM_SCHEDULES, VAE_RECONSTRUCTIONS, ConfigError,
                                   base_config, evaluator_section, model_input_shape,
                                   model_section, rename_model, vae_config, vae_section)

__all__ = ["ABSENT", "ConfigError", "EVALUATORS", "OPTIM_SCHEDULES", "RESUMABLE_FIELDS",
           "VAE_RECONSTRUCTIONS", "apply_overrides", "base_config", "config_code", "config_module",
           "evaluator_section", "load_config", "meaning_changes", "model_input_shape",
           "model_section", "rename_model", "set_fields", "validate", "vae_config", "vae_section",
           "with_defaults"]
