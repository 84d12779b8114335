"""Does the digits feature net separate models? Real digits, a trained quickstart, an untrained
DiT and noise, scored against the digits/8 test split.

    python experiments/eval_digits.py --run runs/quickstart [--num 1000] [--out experiments/results]

--run is a finished `dit-jax train --config configs/quickstart.py` run. Scores 1,000 images of
each kind with the digits/8 classifier (`dit-jax train-classifier --data digits/8`, trained here
if missing): real training digits (disjoint from the test reference), EMA samples of the run,
samples of the same model at its random initialisation (same sampler), and uniform noise.
Writes eval_digits.md / eval_digits.json to --out.
"""
import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from dit_jax import data, engine, flow
from dit_jax.config import model_input_shape
from dit_jax.eval.classifier import classifier_net
from dit_jax.eval.evaluate import Reference, evaluate
from dit_jax.eval.features import Extractor
from dit_jax.models import create_model
from dit_jax.sampling import runs
from dit_jax.sampling.sampler import ImageSampler, sample_in_batches, uniform_labels
from dit_jax.training import denoiser


def samples_of(config, params, labels, seed: int) -> np.ndarray:
  model = create_model(config.model)
  sampler = ImageSampler(model, flow.make_objective(config.objective), config.sample,
                         model_input_shape(config.data))
  return np.concatenate(list(sample_in_batches(sampler, params, labels, 250,
                                               jax.random.PRNGKey(seed))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run", required=True, help="a trained configs/quickstart.py run")
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
  args = parser.parse_args()

  config, state = runs.load_run(args.run)
  net = classifier_net("digits/8", config.data.get("data_dir"))
  extractor = Extractor(net, 250)
  test, _ = data.read_images("digits/8", "test", config.data.get("data_dir"))
  reference = Reference.of_features(net, extractor(test))
  labels = uniform_labels(args.num, 10, seed=1)
  real, real_labels = data.read_images("digits/8", "train", config.data.get("data_dir"),
                                       limit=args.num)
  model = create_model(config.model)
  task = denoiser.denoiser_task(model, None, model_input_shape(config.data))
  untrained = engine.create_state(task, engine.make_optimizer(config.optim, 1)[0],
                                  jax.random.PRNGKey(config.seed)).params
  sets = {}
  start = time.perf_counter()
  sets["real training digits"] = (real, real_labels)
  sets[f"trained quickstart (step {int(state.step)})"] = (
      samples_of(config, state.ema_params, labels, 0), labels)
  sets["untrained DiT (same sampler)"] = (samples_of(config, untrained, labels, 0), labels)
  sets["uniform noise"] = (np.random.default_rng(0).integers(0, 256, real.shape, np.uint8),
                           labels)
  rows = {name: evaluate(extractor, x, reference, y) for name, (x, y) in sets.items()}
  seconds = time.perf_counter() - start

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "eval_digits.json").write_text(json.dumps(
      dict(classifier=net.info, reference="digits/8 test (297 images)", num=args.num,
           rows=rows), indent=2))
  lines = [
      "# The digits feature net separates real digits, a trained model, an untrained one "
      "and noise",
      "",
      f"`python experiments/eval_digits.py --run {args.run} --num {args.num}`: {args.num} "
      "images of each kind scored against the 297 digits of the digits/8 test split, in the "
      f"features of the digits/8 classifier (test accuracy {net.info['test_accuracy']:.4f}, "
      f"{net.info['steps']} steps). Samples: the config's sampler (Heun, 25 steps, guidance "
      f"2), labels uniform. Sampling and scoring took {seconds:.0f} s on 2 CPU cores.",
      "",
      "| images | FD | IS | precision | recall | accuracy |",
      "|---|---|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | {r['fd']:.2f} | {r['is']:.2f} | {r['precision']:.3f} | "
                 f"{r['recall']:.3f} | {r['accuracy']:.3f} |")
  (out / "eval_digits.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
