"""Sampling a training run into files (`sampling.draw.sample_run`, what `dit-jax sample
--workdir` calls): the files hold exactly what the sampler draws with the same noise."""
import jax
import numpy as np
import pytest
from PIL import Image

from dit_jax import flow
from dit_jax.config import apply_overrides, load_config, model_input_shape
from dit_jax.errors import InputError
from dit_jax.models import create_model
from dit_jax.sampling import draw, latents, runs
from dit_jax.sampling.sampler import ImageSampler, sample_in_batches, uniform_labels
from dit_jax.training import denoiser

TINY = ["train.steps=2", "model.depth=1", "model.hidden_size=16", "model.num_heads=2",
        "train.sample_every=0", "data.batch_size=8", "evals.samples.every=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, config, the summary lines of training it and of training it again)."""
  workdir = tmp_path_factory.mktemp("draw") / "run"
  config = apply_overrides(load_config("configs/quickstart.py"), TINY)
  first = denoiser.train(config, str(workdir))
  return workdir, config, (first, denoiser.train(config, str(workdir)))


def test_train_says_what_it_trained_and_when_nothing_was_left(run):
  workdir, _, (first, again) = run
  assert first.startswith("trained steps 0..2 in ") and first.endswith(f"are in {workdir}")
  assert again == (f"nothing was trained: {workdir} is at step 2 and train.steps=2; raise "
                   "--config.train.steps to train further")


def _expected(workdir, labels, seed, batch):
  """The samples of `labels`, drawn here with the run's sampler at one step."""
  config, state = runs.load_run(workdir)
  config.sample.steps = 1
  sampler = ImageSampler(create_model(config.model), flow.make_objective(config.objective),
                         config.sample, model_input_shape(config.data), None,
                         decode=latents.decoder_for(config))
  return np.concatenate(list(sample_in_batches(sampler, state.ema_params, labels, batch,
                                               jax.random.PRNGKey(seed))))


def test_labelled_npz_holds_the_samples_of_those_labels(run, tmp_path):
  workdir, _, _ = run
  out = tmp_path / "s.npz"
  line = draw.sample_run(workdir, out, labels=[3, 1, 4, 1, 5], steps=1, seed=7, batch_size=2)
  assert line == f"wrote 5 samples of step 2 to {out}"
  saved = np.load(out)
  np.testing.assert_array_equal(saved["labels"], [3, 1, 4, 1, 5])
  np.testing.assert_array_equal(saved["arr_0"], _expected(workdir, np.array([3, 1, 4, 1, 5]),
                                                          7, 2))


def test_grid_has_a_row_per_class(run, tmp_path):
  workdir, _, _ = run
  out = tmp_path / "grid.png"
  draw.sample_run(workdir, out, per_class=2, steps=1, seed=1)
  grid = np.asarray(Image.open(out))
  assert grid.shape[:2] == ((10 * 9 + 1) * 8, (2 * 9 + 1) * 8)  # 10 x 2 of 8 px, 8x upscale
  samples = _expected(workdir, np.repeat(np.arange(10), 2), 1, 20)
  cell = grid[8:8 + 64:8, 8 + 72:8 + 72 + 64:8]  # row 0 (class 0), column 1, unscaled
  np.testing.assert_array_equal(cell.reshape(samples[1].shape), samples[1])


def test_sample_set_has_uniform_labels_in_resumable_chunks(run, tmp_path):
  workdir, _, _ = run
  out = tmp_path / "set.npz"
  line = draw.sample_run(workdir, out, num=12, chunk_size=8, batch_size=8, steps=1, seed=5)
  assert line.startswith(f"wrote 12 samples of step 2 to {out} (12 drawn now, 0 from earlier")
  saved = np.load(out)
  np.testing.assert_array_equal(saved["labels"], uniform_labels(12, 10, 5))
  assert saved["arr_0"].shape == (12, 8, 8, 1) and not (tmp_path / "set.npz.chunks").exists()


def test_requests_the_run_cannot_do_are_input_errors(run, tmp_path):
  workdir, _, _ = run
  with pytest.raises(InputError, match="--num 4 writes a sample set: name it --out FILE.npz"):
    draw.sample_run(tmp_path / "not_even_read", tmp_path / "s.png", num=4)
  with pytest.raises(InputError, match=r"this model has 10 classes, so labels lie in 0\.\.10"):
    draw.sample_run(workdir, tmp_path / "s.png", labels=[11])
  with pytest.raises(InputError, match="sample.method"):
    draw.sample_run(workdir, tmp_path / "s.png", method="ddpm")  # a flow-matching run


def test_labels_and_captions_of_the_flags():
  np.testing.assert_array_equal(draw.class_labels(None, 2, 3), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(draw.class_labels(None, 2, 0), [0, 0])  # unconditional
  np.testing.assert_array_equal(draw.class_labels([3, 0], 8, 10), [3, 0])
  np.testing.assert_array_equal(draw.class_labels([10], 8, 10), [10])  # the null class
  assert draw.caption_list(" a red circle; ;a blue square ;") == ["a red circle",
                                                                  "a blue square"]
  assert draw.caption_list(["x", " "]) == ["x"] and draw.caption_list(None) == []
