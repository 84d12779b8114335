import dataclasses
import importlib.util
import json

import jax.numpy as jnp
import pytest

from dit_jax import flow
from dit_jax.config import (ABSENT, EVALUATORS, RESUMABLE_FIELDS, ConfigError, apply_overrides,
                            base_config, evaluator_section, load_config, meaning_changes,
                            model_input_shape, validate, vae_config, with_defaults)
from dit_jax.models import create_model
from dit_jax.models.dit import POSENCS, DiT
from dit_jax.models.mmdit import PRESETS as MMDIT_PRESETS, PRESET_INPUT
from dit_jax.models.unet import CONDITIONINGS as UNET_CONDITIONINGS, PRESETS as UNET_PRESETS
from dit_jax.models.vae import create_vae, vae_preset

_spec = importlib.util.spec_from_file_location("mmdit_config", "configs/mmdit.py")
mmdit_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mmdit_config)


def test_dit_config_builds_the_named_model():
  config = load_config("configs/dit.py:DiT-B/4")
  model = create_model(config.model)
  assert (model.depth, model.hidden_size, model.num_heads, model.patch_size) == (12, 768, 12, 4)
  assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32


def test_overrides_keep_field_types():
  config = load_config("configs/dit.py")
  apply_overrides(config, ["model.scan_layers=false", "model.class_dropout_prob=0.2",
                           "model.num_classes=10", "model.conditioning=in_context"])
  assert config.model.scan_layers is False and config.model.class_dropout_prob == 0.2
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


# Every config file with every documented argument: the values each file sets, written out.

def _built(config):
  """The fields of the model config.model builds (dtypes by name)."""
  model = create_model(config.model)
  return {f.name: (jnp.dtype(v).name if f.name.endswith("dtype") else v)
          for f in dataclasses.fields(model) if f.name not in ("parent", "name")
          for v in [getattr(model, f.name)]}


# depth, width, heads of Table 1 of the DiT paper
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


@pytest.mark.parametrize("size,patch", [(s, p) for s in DIT_SIZES for p in (2, 4, 8)])
def test_dit_config_for_every_preset(size, patch):
  name = f"DiT-{size}/{patch}"
  config = load_config(f"configs/dit.py:{name}")
  built = _built(config)
  assert config.model.name == name
  assert (built["depth"], built["hidden_size"], built["num_heads"]) == DIT_SIZES[size]
  assert built["patch_size"] == patch
  assert (built["num_classes"], built["learn_sigma"], built["dtype"], built["param_dtype"],
          built["scan_layers"], built["attention_backend"]) == (
              1000, True, "bfloat16", "float32", True, "auto")
  assert (config.data.latent_downsample, config.data.latent_channels, config.data.batch_size,
          config.data.image_size) == (8, 4, 256, 256)
  assert (config.optim.lr, config.optim.schedule, config.optim.warmup_steps) == (
      1e-4, "constant", 0)
  assert (config.train.steps, config.train.ema_decay) == (400_000, 0.9999)
  assert (config.objective.kind, config.objective.t_dist) == ("flow", "uniform")
  assert (config.sample.method, config.sample.steps, config.sample.cfg_scale) == (
      "heun", 50, 1.5)


def test_quickstart_and_posenc_configs():
  for spec in ["configs/quickstart.py", *(f"configs/posenc.py:{p}" for p in POSENCS)]:
    config = load_config(spec)
    built = _built(config)
    assert (built["patch_size"], built["hidden_size"], built["depth"], built["num_heads"],
            built["num_classes"], built["learn_sigma"]) == (1, 64, 4, 4, 10, False)
    assert (config.data.name, config.data.batch_size, config.train.ema_decay) == (
        "digits/8", 64, 0.995)
    assert (config.objective.kind, config.objective.t_dist) == ("flow", "logit_normal")
    if spec.startswith("configs/posenc.py"):
      posenc = spec.split(":")[1]
      assert built["posenc"] == posenc and config.train.steps == 1000
      assert built["rope_reference_size"] == (8 if posenc == "rope_scaled" else 0)


def test_latent_quickstart_config():
  config = load_config("configs/latent_quickstart.py")
  built = _built(config)
  assert (built["patch_size"], built["hidden_size"], built["num_classes"]) == (2, 128, 18)
  assert model_input_shape(config.data) == (8, 8, 4)
  assert (config.data.latents, config.data.vae) == ("runs/latents", "runs/vae")


@pytest.mark.parametrize("arg", UNET_CONDITIONINGS)
def test_unet_config_spells_out_the_preset(arg):
  config = load_config(f"configs/unet.py:{arg}")
  assert config.model.name == "UNet-small" and config.model.conditioning == arg
  for key, value in UNET_PRESETS["UNet-small"].items():
    assert config.model[key] == value
  assert _built(config)["attention_backend"] == "auto"
  assert config.data.name == "digits/8" and config.sample.method == "heun"


@pytest.mark.parametrize("arg", ["dit_pooled", "dit_cross", "mmdit_double", "mmdit_single",
                                 "mmdit_hybrid", "mmdit_hybrid@gpu", "dit_pooled@gpu"])
def test_mmdit_variant_configs(arg):
  config = load_config(f"configs/mmdit.py:{arg}")
  variant, _, size = arg.partition("@")
  built = _built(config)
  fields = mmdit_config.model_fields(variant, size or "cpu")
  assert config.model.name == fields.pop("name")
  assert {k: built[k] for k in fields} == fields
  assert built["hidden_size"] == (96 if size == "gpu" else 64)
  assert (config.data.text_tokenizer, config.data.text_length) == ("words:shapes", 24)
  assert (config.sample.method, config.sample.steps, config.sample.cfg_scale) == (
      "euler", 40, 3.0)


@pytest.mark.parametrize("name", list(MMDIT_PRESETS))
def test_mmdit_preset_configs(name):
  config = load_config(f"configs/mmdit.py:{name}")
  built = _built(config)
  for key, value in MMDIT_PRESETS[name].items():
    assert built[key] == value, key
  side, _, channels = PRESET_INPUT[name]
  assert model_input_shape(config.data) == (side, side, channels)


@pytest.mark.parametrize("arg", ["", "SD"])
def test_vae_config_names_its_preset(arg):
  config = load_config(f"configs/vae.py:{arg}" if arg else "configs/vae.py")
  name = arg or "tiny"
  assert config.vae.name == name and "model" not in config and "sample" not in config
  assert create_vae(config.vae) == vae_preset(name)
  assert (config.vae_train.reconstruction, config.vae_train.kl_weight) == ("l2", 1e-6)
  assert (config.train.steps, config.train.ema_decay, config.optim.lr) == (1200, 0.0, 2e-3)


def test_vae_preset_field_still_reads_with_a_message():
  with pytest.warns(UserWarning, match="config.vae.preset is now config.vae.name"):
    assert create_vae({"preset": "tiny"}) == vae_preset("tiny")
  with pytest.raises(ValueError, match="both name and preset"):
    create_vae({"preset": "tiny", "name": "SD"})


def test_every_section_field_has_a_default_in_base_config():
  config = base_config()
  for key in ("latent_channels", "text_tokenizer", "text_length", "worker_count", "latents",
              "vae"):
    assert key in config.data
  # the model section lists every field of the family, so any can be overridden
  dit_fields = {f.name for f in dataclasses.fields(DiT)} - {"parent", "name"}
  assert set(config.model) == dit_fields | {"name"}
  # the DDPM schedule lives in the objective only
  assert {"num_steps", "beta_start", "beta_end"} <= set(config.objective)
  assert not {"num_steps", "beta_start", "beta_end"} & set(config.sample)


def test_the_sampler_reads_the_schedule_of_the_objective():
  config = load_config("configs/quickstart.py")
  apply_overrides(config, ["objective.kind=ddpm_hybrid", "objective.num_steps=500",
                           "sample.method=ddpm"])
  sampler = flow.sampler_for(config.sample, flow.make_objective(config.objective))
  assert sampler.path == flow.VPPath(500) and sampler.learned_variance
  with pytest.raises(ConfigError, match="sample.steps=600 exceeds the 500 steps"):
    apply_overrides(config, ["sample.steps=600"])


def test_a_new_model_name_rebases_the_section():
  config = load_config("configs/dit.py:DiT-XL/2")
  apply_overrides(config, ["model.name=DiT-B/4"])
  built = _built(config)
  assert (built["depth"], built["hidden_size"], built["patch_size"]) == (12, 768, 4)
  assert built["dtype"] == "bfloat16"  # set by the config file: kept
  config = load_config("configs/quickstart.py")
  apply_overrides(config, ["model.name=UNet-small"])
  assert create_model(config.model).base_channels == UNET_PRESETS["UNet-small"]["base_channels"]


# Validation.

def test_override_parsing_is_strict():
  config = load_config("configs/quickstart.py")
  apply_overrides(config, ["data.batch_size=1e2", "optim.lr=3e-4", "sample.cfg_scale=4"])
  assert config.data.batch_size == 100 and isinstance(config.data.batch_size, int)
  assert config.optim.lr == 3e-4 and config.sample.cfg_scale == 4.0
  with pytest.raises(ConfigError, match=r"data.batch_size='6.5': expected an integer .* not "
                                        r"rounded"):
    apply_overrides(config, ["data.batch_size=6.5"])
  with pytest.raises(ConfigError, match=r"optim.lr='abc': expected a number"):
    apply_overrides(config, ["optim.lr=abc"])


BAD = [
    ("data.batch_size=6.5", "data.batch_size"),
    ("data.batch_size=abc", "data.batch_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=-4", "data.batch_size"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=inf", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1e-3", "optim.lr"),
    ("optim.lr=abc", "optim.lr"),
    ("model.depth=0", "model.depth"),
    ("model.num_heads=0", "model.num_heads"),
    ("model.scan_layers=maybe", "model.scan_layers"),
    ("train.ema_decay=1.0", "train.ema_decay"),
    ("train.ema_decay=-0.1", "train.ema_decay"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.steps=-1", "train.steps"),
    ("train.log_every=-5", "train.log_every"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.sample_every=-1", "train.sample_every"),
    ("sample.cfg_scale=-1", "sample.cfg_scale"),
    ("sample.steps=0", "sample.steps"),
    ("sample.eta=0.5", "sample.eta"),  # heun: eta only applies to ddim
    ("objective.kind=score_sde", "objective.kind"),
    ("objective.kind=ddpm", "sample.method"),  # heun on a DDPM chain
    ("sample.method=rk4", "sample.method"),
    ("optim.schedule=linear", "optim.schedule"),
    ("data.image_size=0", "data.image_size"),
    ("seed=1.5", "seed"),
    ("mesh.fsdp=0", "mesh.fsdp"),
    ("evals.samples.every=-1", "evals.samples.every"),
    ("evals.samples.num_samples=1", "evals.samples.num_samples"),
    ("evals.samples.batch_size=0", "evals.samples.batch_size"),
    ("evals.samples.features=3", "evals.samples.features"),
]


@pytest.mark.parametrize("override,field", BAD)
def test_bad_values_raise_config_error_naming_the_field(override, field):
  config = load_config("configs/quickstart.py")
  with pytest.raises(ConfigError) as info:
    apply_overrides(config, [override])
  message = str(info.value)
  assert field in message and "\n" not in message


@pytest.mark.parametrize("command,config,field", [
    ("train", "configs/quickstart.py", "model.dtype"),
    ("train", "configs/quickstart.py", "model.param_dtype"),
    ("train-vae", "configs/vae.py", "vae.dtype"),
])
def test_a_dtype_is_checked_by_name_before_any_work(capsys, tmp_path, command, config, field):
  """--config.model.dtype=float8 was a TypeError with a traceback deep in the model."""
  from dit_jax import cli
  with pytest.raises(SystemExit) as stop:
    cli.main([command, "--config", config, "--workdir", str(tmp_path), f"--config.{field}=float8"])
  assert stop.value.code == 2
  assert (f"config.{field}='float8' must be one of ('float32', 'bfloat16', 'float16')"
          in capsys.readouterr().err)
  assert not (tmp_path / "checkpoints").exists()


def test_guidance_scale_message_says_what_scales_mean():
  with pytest.raises(ConfigError, match=r"0: unconditional, 1: conditional without guidance"):
    apply_overrides(load_config("configs/quickstart.py"), ["sample.cfg_scale=-2"])


def test_config_files_are_validated_when_loaded(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("from dit_jax.config import base_config\n\n\ndef get_config():\n"
                  "  config = base_config()\n  config.train.keep_checkpoints = 0\n"
                  "  return config\n")
  with pytest.raises(ConfigError, match="train.keep_checkpoints=0 must be >= 1"):
    load_config(str(path))


def test_evaluator_sections_are_checked_by_their_type():
  config = load_config("configs/quickstart.py")
  assert dict(config.evals.samples) == dict(EVALUATORS["samples"], type="samples", every=1000,
                                            num_samples=500)
  with pytest.raises(ConfigError, match=r"type 'fid' is not one of \('samples', "
                                        r"'composition', 'loss_by_t'\)"):
    evaluator_section("fid")
  with pytest.raises(ConfigError, match=r"fields \['features'\] are not fields of a "
                                        r"'composition' evaluator"):
    evaluator_section("composition", features="data")
  config.evals.text = evaluator_section("composition")
  config.evals.text.features = "data"  # set after the section was built: validate finds it
  with pytest.raises(ConfigError, match=r"config.evals.text: fields \['features'\]"):
    validate(config)
  config.evals.text = {"every": 5}
  with pytest.raises(ConfigError, match=r"config.evals.text must be an evaluator section with "
                                        r"a `type`"):
    validate(config)
  # two evaluators of one type under one prefix would log the same metric names
  config.evals.text = evaluator_section("samples", num_samples=50)
  with pytest.raises(ConfigError, match=r"evals.text.prefix='eval/' is also evals.samples's"):
    validate(config)
  config.evals.text.prefix = "eval_50/"
  validate(config)
  # evaluators do not feed back into training: a resumed run may add, change or drop them
  saved = load_config("configs/quickstart.py")
  assert meaning_changes(saved.to_dict(), config) == []
  del config.evals["samples"]
  assert meaning_changes(saved.to_dict(), config) == []


def test_an_evaluator_refuses_a_model_it_cannot_condition():
  from dit_jax import flow
  from dit_jax.eval import evaluators
  from dit_jax.models import create_model
  for spec, kind, match in [("configs/mmdit.py:mmdit_double", "samples",
                             r"config.evals.e: a 'samples' evaluator draws class labels"),
                            ("configs/quickstart.py", "composition",
                             r"config.evals.e: a 'composition' evaluator feeds caption token")]:
    config = load_config(spec)
    config.evals = {"e": evaluator_section(kind)}
    run = evaluators.EvalContext(config, create_model(config.model), flow.make_objective(
        config.objective), (8, 8, 3), None)
    with pytest.raises(ValueError, match=match):
      evaluators.hooks(run)


# Resuming.

def test_resumable_fields_do_not_change_the_meaning():
  saved = load_config("configs/quickstart.py")
  new = load_config("configs/quickstart.py")
  assert meaning_changes(saved, new) == []
  apply_overrides(new, ["train.steps=9000", "train.log_every=7", "train.checkpoint_every=9",
                        "train.keep_checkpoints=5", "train.sample_every=0",
                        "sample.cfg_scale=4.0", "sample.steps=3", "mesh.fsdp=2",
                        "data.num_threads=8", "data.prefetch=1", "model.attention_backend=xla",
                        "model.remat_policy=full", "model.dtype=bfloat16"])
  assert meaning_changes(saved, new) == []
  # a JSON round trip (tuples become lists) changes nothing either
  assert meaning_changes(json.loads(saved.to_json()), saved) == []


def test_meaning_changes_lists_every_other_field():
  saved = load_config("configs/quickstart.py")
  new = load_config("configs/quickstart.py")
  apply_overrides(new, ["optim.lr=3e-4", "model.scan_layers=true", "train.ema_decay=0.9",
                        "objective.shift=3.0", "seed=1", "data.batch_size=32"])
  assert meaning_changes(saved.to_dict(), new.to_dict()) == [
      ("data.batch_size", 64, 32), ("model.scan_layers", False, True),
      ("objective.shift", 1.0, 3.0), ("optim.lr", 1e-3, 3e-4), ("seed", 0, 1),
      ("train.ema_decay", 0.995, 0.9)]
  new = new.to_dict()
  del new["objective"]["beta_end"]
  new["model"]["extra"] = 1
  changes = dict((field, (a, b)) for field, a, b in meaning_changes(saved.to_dict(), new))
  assert changes["objective.beta_end"] == (0.02, ABSENT)
  assert changes["model.extra"] == (ABSENT, 1)


def test_a_recorded_config_reads_missing_fields_as_their_defaults():
  """config.json of a run recorded before sample.guide_channels / data.vae existed: those read
  as the defaults, the recorded values stay, and nothing changes its meaning."""
  recorded = json.loads(load_config("configs/unet.py").to_json())
  recorded["sample"]["steps"] = 7
  del recorded["sample"]["guide_channels"], recorded["data"]["vae"]
  config = with_defaults(recorded)
  assert config.sample.guide_channels == 0 and config.data.vae is None
  assert config.sample.steps == 7 and config.model.name == "UNet-small"
  assert config.model.base_channels == recorded["model"]["base_channels"]
  assert meaning_changes(recorded, config) == []
  validate(config)


def test_a_run_without_a_model_section_resumes():
  # A VAE (or classifier) run has no model / objective / sample: their defaults must not
  # count as changes, or such a run could never resume.
  saved = vae_config()
  assert meaning_changes(json.loads(saved.to_json()), vae_config()) == []
  changed = vae_config()
  changed.vae_train.kl_weight = 1e-3
  assert meaning_changes(saved.to_dict(), changed) == [("vae_train.kl_weight", 1e-6, 1e-3)]


def test_resumable_fields_name_existing_fields():
  fields = set(_leaves_of(base_config())) | set(_leaves_of(vae_config()))
  sections = set(base_config()) | {"eval"}  # evals starts empty; eval is the retired section
  for field in RESUMABLE_FIELDS:
    assert field in fields or any(f.startswith(field + ".") for f in fields) or (
        field in sections), field


def _leaves_of(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _leaves_of(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"
