"""Evaluations during training, as in big_vision's `config.evals`: each named section of
config.evals (`config.evaluator_section`) becomes an engine hook that evaluates the parameters
every `every` steps, at the steps of `at_steps` and at the end, and logs `prefix` + metric.

A kind (KINDS, by `type`; its fields and defaults are config.EVALUATORS) is a function
`(name, section, context, log)` in the module of what it measures; it does the slow set-up
once, before training (reference features, captions, a compiled sampler), and returns
`action(step, state) -> {metric: value}`:

  samples      FD / sFD / IS / precision / recall / accuracy of samples with uniform class
               labels (`dit_jax.eval.evaluate.samples_evaluator`)
  composition  caption-conditioned samples of a shapes split, checked exactly against the
               captions (`dit_jax.eval.composition.composition_evaluator`)
  loss_by_t    the objective's loss on a fixed held-out batch at fixed times t and noise, EMA
               and raw parameters (`dit_jax.eval.loss_by_t.loss_by_t_evaluator`)
"""
import dataclasses

from dit_jax import engine
from dit_jax.eval.composition import composition_evaluator
from dit_jax.eval.evaluate import samples_evaluator
from dit_jax.eval.loss_by_t import loss_by_t_evaluator
from dit_jax.sampling.latents import decoder_for
from dit_jax.sampling.sampler import ImageSampler


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator reads of the run it evaluates."""
  config: object       # the run's config
  model: object        # the denoiser (contract.Denoiser)
  objective: object    # flow objective (the sampler's conversions)
  image_shape: tuple   # (H, W, C) the model sees
  plan: object         # parallel.ShardingPlan of the run

  def sampler(self) -> ImageSampler:
    return ImageSampler(self.model, self.objective, self.config.sample, self.image_shape,
                        self.plan, decode=decoder_for(self.config))


KINDS = {"samples": samples_evaluator, "composition": composition_evaluator,
         "loss_by_t": loss_by_t_evaluator}


def hooks(run: EvalContext, log=print) -> list[engine.Periodic]:
  """One hook per section of run.config.evals with every > 0 or at_steps, set up now (before
  training)."""
  return [engine.Periodic(f"evals.{name}", ec.every,
                          _prefixed(KINDS[ec.type](name, ec, run, log), ec.prefix),
                          at_steps=tuple(ec.at_steps))
          for name, ec in run.config.evals.items() if ec.every > 0 or ec.at_steps]


def _prefixed(action, prefix: str):
  return lambda step, state: {prefix + key: value for key, value in action(step, state).items()}
