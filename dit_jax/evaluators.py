"""Evaluations during training, as in big_vision's `config.evals`: each named section of
config.evals (`config.evaluator_section`) becomes an engine hook that samples the EMA
parameters every `every` steps (and at the end) and logs `prefix` + metric.

A kind (KINDS, whose fields and defaults are config.EVALUATORS) is a function that does the
slow set-up once, before training (reference features, captions, a compiled sampler), and
returns `action(step, state) -> {metric: value}`:

  samples      FD / sFD / IS / precision / recall / accuracy of samples with uniform class
               labels (dit_jax.eval.evaluate)
  composition  caption-conditioned samples of a shapes split, checked exactly against the
               captions (dit_jax.eval.composition)
"""
import dataclasses

import jax
import numpy as np

from dit_jax import engine
from dit_jax.models import contract
from dit_jax.sample import ImageSampler, sample_in_batches, uniform_labels


@dataclasses.dataclass(frozen=True)
class Run:
  """What an evaluator reads of the run it evaluates."""
  config: object       # the run's config
  model: object        # the denoiser (contract.Denoiser)
  objective: object    # flow objective (the sampler's conversions)
  image_shape: tuple   # (H, W, C) the model sees
  plan: object         # parallel.ShardingPlan of the run

  def sampler(self) -> ImageSampler:
    from dit_jax import latents
    return ImageSampler(self.model, self.objective, self.config.sample, self.image_shape,
                        self.plan, decode=latents.decoder_for(self.config))


def samples(name: str, ec, run: Run, log=print):
  """num_samples EMA samples with uniform labels, scored against the reference."""
  from dit_jax import data
  from dit_jax.eval.evaluate import Reference, evaluate, feature_net, load_reference
  from dit_jax.eval.features import Extractor
  config, spec = run.config, run.model.condition_spec
  if set(spec) - {"label"}:
    raise ValueError(f"config.evals.{name}: a 'samples' evaluator draws class labels or "
                     f"nothing, but {config.model.name} reads {sorted(spec)}; use a "
                     f"'composition' evaluator for captions, or remove config.evals.{name}")
  data_dir = config.data.get("data_dir")
  net = feature_net(config.data.name if ec.features == "data" else ec.features, data_dir, log)
  extractor = Extractor(net, ec.batch_size, run.plan)
  if ec.reference:
    reference = load_reference(ec.reference, extractor)
  else:
    real, _ = data.read_images(config.data.name, ec.split, data_dir,
                               config.data.get("image_size"))
    reference = Reference.of_features(net, extractor(real))
  sampler = run.sampler()
  labels = uniform_labels(ec.num_samples, contract.class_count(run.model), config.seed + 2)

  def action(step, state):
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), step)
    images = np.concatenate(list(sample_in_batches(
        sampler, state.ema_params, labels, min(ec.batch_size, len(labels)), rng)))
    return evaluate(extractor, images, reference, labels if "label" in spec else None)
  return action


def composition(name: str, ec, run: Run, log=print):
  """The first num_samples captions of the shapes data's `split`, sampled from the same noise
  at every evaluation (a learning curve of one sample set) and checked exactly."""
  from dit_jax.data.shapes import SPLIT_IDS
  from dit_jax.data.tokenizers import caption_condition
  from dit_jax.eval import composition as check
  config, keys = run.config, run.model.condition_keys
  if set(keys) != {"text_tokens", "text_mask"}:
    raise ValueError(f"config.evals.{name}: a 'composition' evaluator feeds caption token ids "
                     f"(text_tokens, text_mask), but {config.model.name} reads {sorted(keys)}")
  if not config.data.text_tokenizer:
    raise ValueError(f"config.evals.{name}: set config.data.text_tokenizer (e.g. "
                     "'words:shapes'), the tokenizer the model was trained with")
  shapes_config = check.shapes_config(config.data.name)
  if ec.split not in SPLIT_IDS:
    raise ValueError(f"config.evals.{name}.split={ec.split!r}: a shapes data set has the splits "
                     f"{tuple(SPLIT_IDS)}")
  available = shapes_config.num_test if ec.split == "test" else shapes_config.num_train
  objects = check.split_objects(shapes_config, ec.split, min(ec.num_samples, available))
  unseen = check.unseen(objects["captions"], shapes_config)
  cond = caption_condition(config.data, objects["captions"])
  sampler = run.sampler()

  def action(step, state):
    images = np.concatenate(list(sample_in_batches(
        sampler, state.ema_params, cond, min(ec.batch_size, len(objects["captions"])),
        jax.random.PRNGKey(config.seed + 3))))
    return check.scores(check.check_images(images, objects), unseen)
  return action


KINDS = {"samples": samples, "composition": composition}


def hooks(run: Run, log=print) -> list[engine.Periodic]:
  """One hook per section of run.config.evals with every > 0, set up now (before training)."""
  return [engine.Periodic(f"evals.{name}", ec.every,
                          _prefixed(KINDS[ec.type](name, ec, run, log), ec.prefix))
          for name, ec in run.config.get("evals", {}).items() if ec.every > 0]


def _prefixed(action, prefix: str):
  return lambda step, state: {prefix + key: value for key, value in action(step, state).items()}
