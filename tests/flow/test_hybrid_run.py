"""A learned-variance (objective ddpm_hybrid) run end to end: `dit-jax train` for two steps,
then `dit-jax sample`, which must use the learned-variance DDPM sampler of the run's config."""
import jax
import numpy as np

from dit_jax import cli, data, flow
from dit_jax.models import create_model
from dit_jax.sampling import images, runs
from dit_jax.sampling.sampler import ImageSampler
from dit_jax.training import denoiser


def test_a_ddpm_hybrid_run_trains_and_samples_through_the_cli(tmp_path):
  data_dir, run, out = str(tmp_path / "tfds"), tmp_path / "run", tmp_path / "samples.npz"
  data.prepare("digits/8", data_dir)
  cli.main(["train", "--config", "configs/quickstart.py", "--workdir", str(run),
            f"--config.data.data_dir={data_dir}", "--config.objective.kind=ddpm_hybrid",
            "--config.objective.num_steps=100", "--config.model.learn_sigma=true",
            "--config.model.hidden_size=32", "--config.model.depth=1",
            "--config.model.num_heads=2", "--config.model.patch_size=2", "--config.evals.samples.every=0",
            "--config.data.batch_size=16", "--config.train.steps=2",
            "--config.train.log_every=1", "--config.train.checkpoint_every=2",
            "--config.train.sample_every=0", "--config.train.samples_per_class=1",
            "--config.sample.method=ddpm", "--config.sample.steps=3"])
  cli.main(["sample", "--workdir", str(run), "--labels", "1,2,3", "--out", str(out)])
  got = np.load(out)["arr_0"]
  assert got.shape == (3, 8, 8, 1) and got.dtype == np.uint8
  # what the CLI ran: the run's objective gives the chain (100 steps) and the learned variance
  config, state = runs.load_run(run)
  objective = flow.make_objective(config.objective)
  sampler = ImageSampler(create_model(config.model), objective, config.sample, (8, 8, 1))
  assert sampler.sampler.learned_variance and sampler.sampler.path == flow.VPPath(100)
  rng = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  want = images.to_uint8(sampler(state.ema_params, np.array([1, 2, 3]), rng))
  np.testing.assert_array_equal(got, want)
