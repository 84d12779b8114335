"""Feature extraction, references, `evaluate`, resumable sample sets and the digits classifier."""
import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax import cli, data, paths
from dit_jax.eval import classifier, metrics
from dit_jax.eval.evaluate import Reference, evaluate, load_reference
from dit_jax.eval.features import Extractor, FeatureNet
from dit_jax.sampling import images, sample_set, sampler


def toy_net(name="toy", label_classes=3) -> FeatureNet:
  """pool = per-channel means and a few pixels; logits = a fixed projection of pool."""
  w = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)

  def apply(params, images_uint8):
    x = images_uint8.astype(jnp.float32) / 255.0
    pool = jnp.concatenate([x.mean(axis=(1, 2)), x[:, 0, :2, 0], x[:, 1, 1, :]], axis=1)[:, :5]
    return {"pool": pool, "logits": pool @ params["w"]}
  return FeatureNet(name, apply, {"w": w}, image_shape=(4, 4, 2), label_classes=label_classes)


def random_images(n, seed=0, shape=(4, 4, 2)):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_extractor_batches_over_eight_devices_equal_one_call():
  net, x = toy_net(), random_images(37)
  out = Extractor(net, batch_size=12)(x)  # rounded up to 16 (8 devices); last batch padded
  direct = net.apply(net.params, jnp.asarray(x))
  assert set(out) == {"pool", "logits"}
  for key in out:
    np.testing.assert_allclose(out[key], np.asarray(direct[key]), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"\(8, 8, 2\) but the toy feature net reads"):
    Extractor(net)(random_images(3, shape=(8, 8, 2)))
  with pytest.raises(ValueError, match="expected uint8"):
    Extractor(net)(x.astype(np.float32))


def test_reference_round_trip_and_evaluation_of_the_reference_itself(tmp_path):
  net, real = toy_net(), random_images(60)
  extractor = Extractor(net, 32)
  ref = Reference.of_features(net, extractor(real))
  ref.save(tmp_path / "ref.npz")
  loaded = load_reference(tmp_path / "ref.npz", extractor)
  np.testing.assert_array_equal(loaded.stats.sigma, ref.stats.sigma)
  np.testing.assert_array_equal(loaded.pool, ref.pool)
  labels = np.argmax(extractor(real)["logits"], axis=1)
  scores = evaluate(extractor, real, loaded, labels)
  assert abs(scores["fd"]) < 1e-9
  assert scores["precision"] == scores["recall"] == scores["accuracy"] == 1.0
  assert scores["is"] == pytest.approx(metrics.inception_score(extractor(real)["logits"])[0])
  with pytest.raises(ValueError, match="holds toy features but the samples are scored with x"):
    load_reference(tmp_path / "ref.npz", Extractor(toy_net("x"), 32))
  other = dataclasses.replace(net, params={"w": net.params["w"] + 1})  # same name, new weights
  with pytest.raises(ValueError, match=f"{tmp_path / 'ref.npz'} was computed with other toy "
                                       f"weights \\({net.identity[:12]}\\) than the net scoring "
                                       f"the samples \\({other.identity[:12]}\\)"):
    load_reference(tmp_path / "ref.npz", Extractor(other, 32))
  with np.load(tmp_path / "ref.npz") as f:  # written before references recorded the weights
    np.savez(tmp_path / "old.npz", **{k: f[k] for k in f.files if k != "net_id"})
  with pytest.raises(ValueError, match="does not record which toy weights made it .* recompute "
                                       "the reference with `dit-jax eval-ref`"):
    load_reference(tmp_path / "old.npz", extractor)


def test_an_adm_reference_batch_uses_its_precomputed_statistics(tmp_path):
  net = toy_net("inception", label_classes=0)
  real = random_images(30, seed=1)
  mu, sigma = np.full(5, 7.0), np.eye(5) * 2.0
  np.savez(tmp_path / "adm.npz", arr_0=real, mu=mu, sigma=sigma)
  ref = load_reference(tmp_path / "adm.npz", Extractor(net, 16))
  np.testing.assert_array_equal(ref.stats.mu, mu)  # FID from the file's statistics
  np.testing.assert_allclose(ref.pool, Extractor(net, 16)(real)["pool"])  # P/R from arr_0
  np.savez(tmp_path / "images_only.npz", arr_0=real)
  ref = load_reference(tmp_path / "images_only.npz", Extractor(net, 16))
  np.testing.assert_allclose(ref.stats.mu, ref.pool.astype(np.float64).mean(0))


def test_npz_images_are_memory_mapped_when_stored(tmp_path):
  x = random_images(9)
  images.save_npz(x, np.arange(9), tmp_path / "s.npz")
  loaded, labels = images.load_npz_images(tmp_path / "s.npz")
  assert isinstance(loaded, np.memmap)
  np.testing.assert_array_equal(loaded, x)
  np.testing.assert_array_equal(labels, np.arange(9))
  np.savez_compressed(tmp_path / "c.npz", arr_0=x)
  loaded, labels = images.load_npz_images(tmp_path / "c.npz")
  np.testing.assert_array_equal(loaded, x)
  assert labels is None
  np.savez(tmp_path / "f.npz", arr_0=x.astype(np.float32))
  with pytest.raises(ValueError, match="expected uint8"):
    images.load_npz_images(tmp_path / "f.npz")


class FakeSampler:
  """Images that are a pure function of (label, rng): enough to check chunking and resume."""
  plan, decode, image_shape = None, None, (4, 4, 2)  # as an ImageSampler of a pixel model

  def __init__(self):
    self.calls = 0

  def __call__(self, params, labels, rng, cfg_scale=None):
    self.calls += 1
    seed = int(np.asarray(rng).ravel()[-1]) % 1000
    base = (np.asarray(labels, np.float32)[:, None, None, None] / 10 + seed / 1000) % 1
    return np.broadcast_to(base * 2 - 1, (len(labels), 4, 4, 2))


def test_sample_sets_resume_after_an_interruption(tmp_path):
  labels = sampler.uniform_labels(50, 10, seed=0)
  assert labels.min() >= 0 and labels.max() < 10 and len(set(labels)) > 5
  rng = np.asarray([0, 42], np.uint32)
  whole = tmp_path / "whole.npz"
  sample_set.sample_to_npz(FakeSampler(), None, labels, whole, batch_size=8, rng=rng, chunk_size=20)

  class Interrupt(Exception):
    pass

  def stop_in_third_chunk(count, seen=[0]):  # noqa: B006 (state across calls)
    seen[0] += count
    if seen[0] > 40:
      raise Interrupt
  part = tmp_path / "part.npz"
  with pytest.raises(Interrupt):
    sample_set.sample_to_npz(FakeSampler(), None, labels, part, batch_size=8, rng=rng,
                         chunk_size=20, progress=stop_in_third_chunk)
  assert not part.exists() and len(list((tmp_path / "part.npz.chunks").glob("chunk-*"))) == 2
  again = FakeSampler()
  drawn = sample_set.sample_to_npz(again, None, labels, part, batch_size=8, rng=rng, chunk_size=20)
  assert drawn == 10 and again.calls == 2  # only the last chunk, in batches of 8
  np.testing.assert_array_equal(images.load_npz_images(part)[0],
                                images.load_npz_images(whole)[0])
  assert not (tmp_path / "part.npz.chunks").exists()
  (tmp_path / "other.npz.chunks").mkdir()
  (tmp_path / "other.npz.chunks" / "meta.json").write_text(json.dumps({"num": 3}))
  with pytest.raises(ValueError, match="chunks of another sample set"):
    sample_set.sample_to_npz(FakeSampler(), None, labels, tmp_path / "other.npz", batch_size=8,
                         rng=rng, chunk_size=20)


def test_digits_classifier_is_cached_and_its_fd_ranks_real_above_corrupted(digits_net,
                                                                           monkeypatch):
  data_dir, info = digits_net
  assert info["test_accuracy"] > 0.85 and info["train_accuracy"] > 0.9
  monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
  net = classifier.classifier_net("digits/8", data_dir)  # from the cache
  assert net.info["test_accuracy"] == info["test_accuracy"] and net.label_classes == 10
  extractor = Extractor(net, 256)
  test, _ = data.read_images("digits/8", "test", data_dir)
  reference = Reference.of_features(net, extractor(test))
  train, labels = data.read_images("digits/8", "train", data_dir, limit=600)
  rng = np.random.default_rng(0)
  noisy = np.clip(train + rng.normal(0, 100, train.shape), 0, 255).astype(np.uint8)
  noise = rng.integers(0, 256, train.shape, dtype=np.uint8)
  fd = {name: evaluate(extractor, x, reference, labels)
        for name, x in [("train", train), ("noisy", noisy), ("noise", noise)]}
  assert fd["train"]["accuracy"] > 0.95 and fd["noise"]["accuracy"] < 0.3
  assert 3 * fd["train"]["fd"] < fd["noisy"]["fd"] and 1.5 * fd["noisy"]["fd"] < fd["noise"]["fd"]


def test_eval_commands_score_a_sample_set(digits_net, tmp_path, capsys):
  data_dir, _ = digits_net
  test, labels = data.read_images("digits/8", "test", data_dir)
  images.save_npz(test[:100], labels[:100], tmp_path / "s.npz")
  cli.main(["eval-ref", "--features", "digits/8", "--data-dir", data_dir, "--data", "digits/8",
            "--split", "train", "--num", "500", "--out", str(tmp_path / "ref.npz")])
  assert "reference statistics of 500 images" in capsys.readouterr().out
  cli.main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"),
            "--features", "digits/8", "--data-dir", data_dir, "--format", "json"])
  scores = json.loads(capsys.readouterr().out)
  assert scores["samples"] == 100 and scores["accuracy"] > 0.85
  assert set(scores) == {"samples", "fd", "is", "precision", "recall", "accuracy"}
  with pytest.raises(SystemExit):
    cli.main(["eval", "--samples", str(tmp_path / "missing.npz"), "--ref",
              str(tmp_path / "ref.npz"), "--features", "digits/8"])
  assert "missing.npz does not exist: pass a .npz file" in capsys.readouterr().err


def test_a_reference_of_a_retrained_classifier_is_refused(digits_net, tmp_path, capsys):
  """A reference is matched to its feature net's weights, not only its name: samples scored
  against a reference of the digits classifier retrained since got FD 78.8 and precision /
  recall 0 (where their own gave 10.0 / 0.61 / 0.88), with exit status 0."""
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(digits_net[0], data_dir)  # retrained here: the session's classifier stays
  test, labels = data.read_images("digits/8", "test", data_dir)
  images.save_npz(test[:100], labels[:100], tmp_path / "s.npz")
  ref, net = str(tmp_path / "ref.npz"), ["--features", "digits/8", "--data-dir", data_dir]
  make_ref = ["eval-ref", *net, "--data", "digits/8", "--split", "train", "--num", "500",
              "--out", ref]
  score = ["eval", "--samples", str(tmp_path / "s.npz"), "--ref", ref, *net, "--format", "json"]
  cli.main(make_ref)
  cli.main(score)  # its own net
  old_id = classifier.classifier_net("digits/8", data_dir, train=False).identity
  cli.main(["train-classifier", "--data", "digits/8", "--data-dir", data_dir, "--steps", "20",
            "--force"])
  new_id = classifier.classifier_net("digits/8", data_dir, train=False).identity
  assert new_id != old_id
  capsys.readouterr()
  with pytest.raises(SystemExit) as stop:
    cli.main(score)
  assert stop.value.code == 2
  assert capsys.readouterr().err == (
      f"dit-jax eval: reference {ref} was computed with other digits/8 weights ({old_id[:12]}) "
      f"than the net scoring the samples ({new_id[:12]}), e.g. a classifier retrained since: "
      "recompute the reference with `dit-jax eval-ref` and the same --features / --inception\n")
  cli.main(make_ref)  # the fix
  capsys.readouterr()
  cli.main(score)
  assert json.loads(capsys.readouterr().out)["samples"] == 100


def test_damaged_or_missing_classifier_weights_are_named_with_the_fix(digits_net, tmp_path,
                                                                      capsys):
  """classifier.npz cut short (a kill or a full disk while it was written) or gone: eval names
  the file and how to train the classifier again (was a BadZipFile traceback, or exit 1)."""
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(digits_net[0], data_dir)
  test, labels = data.read_images("digits/8", "test", data_dir)
  images.save_npz(test[:50], labels[:50], tmp_path / "s.npz")
  net = ["--features", "digits/8", "--data-dir", data_dir]
  cli.main(["eval-ref", *net, "--images", str(tmp_path / "s.npz"), "--out",
            str(tmp_path / "ref.npz")])
  weights = classifier.cache_dir("digits/8", data_dir) / "classifier.npz"
  score = ["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"),
           *net]
  for damage in ("cut short", "gone"):
    if damage == "cut short":
      weights.write_bytes(weights.read_bytes()[:500])
    else:
      weights.unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
      cli.main(score)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    assert "dit-jax eval: the digits/8 classifier's weights: " in err and str(weights) in err
    assert "train it again: `dit-jax train-classifier --data digits/8 --force`" in err


def test_inception_scores_fid_sfid_is_precision_recall(tmp_path):
  import jax

  from dit_jax import parallel
  from dit_jax.eval.evaluate import feature_net
  from tests.eval.inception_weights import random_state_dict
  np.savez(tmp_path / "inception.npz", **random_state_dict())
  net = feature_net(f"inception:{tmp_path / 'inception.npz'}")
  one_device = parallel.ShardingPlan.create(devices=jax.devices()[:1])  # one compile, small
  extractor = Extractor(net, 12, one_device)
  real, fake = random_images(12, 1, (8, 8, 3)), random_images(12, 2, (8, 8, 3))
  Reference.of_features(net, extractor(real)).save(tmp_path / "ref.npz")
  with np.load(tmp_path / "ref.npz") as ref:  # ADM's key names, sFID on 7 x 17 x 17 features
    assert str(ref["net"]) == "inception" and ref["mu_s"].shape == (2023,)
    assert ref["pool"].shape == (12, 2048)
  scores = evaluate(extractor, fake, load_reference(tmp_path / "ref.npz", extractor))
  assert set(scores) == {"fid", "sfid", "is", "precision", "recall"}
  assert scores["fid"] > 0 and scores["sfid"] > 0 and 1 <= scores["is"] <= 1008


def test_training_logs_its_evaluations(digits_net, tmp_path):
  from dit_jax.config import base_config, evaluator_section
  from dit_jax.engine.run_log import read_history
  from dit_jax.training import denoiser
  data_dir, _ = digits_net
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=16, depth=1, num_heads=2,
                      num_classes=10, learn_sigma=False)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=16)
  config.train.update(steps=4, log_every=2, checkpoint_every=0, sample_every=0)
  config.sample.update(method="euler", steps=2)
  config.evals.samples = evaluator_section("samples", every=2, num_samples=24, batch_size=16)
  denoiser.train_and_evaluate(config, str(tmp_path))
  evals = [h for h in read_history(tmp_path) if "eval/fd" in h]
  assert [h["step"] for h in evals] == [2, 4]
  for h in evals:
    assert h["eval/fd"] > 0 and 0 <= h["eval/accuracy"] <= 1 and 1 <= h["eval/is"] <= 10
    assert 0 <= h["eval/precision"] <= 1 and 0 <= h["eval/recall"] <= 1


def test_evaluate_files_and_write_reference_are_the_library_steps(tmp_path, monkeypatch):
  """The calls of `dit-jax eval-ref` / `eval`: the reference file holds the statistics of the
  first `num` images, and the scores are `evaluate` of the samples against it."""
  from dit_jax.eval import evaluate as evaluate_module
  specs = []
  monkeypatch.setattr(evaluate_module, "feature_net",
                      lambda spec, data_dir=None: specs.append((spec, data_dir)) or toy_net())
  real, drawn = random_images(300, seed=1), random_images(200, seed=2)
  labels = np.arange(200) % 3
  np.savez(tmp_path / "real.npz", arr_0=real)
  images.save_npz(drawn, labels, tmp_path / "drawn.npz")
  line = evaluate_module.write_reference(tmp_path / "ref.npz", "toy", image_file=tmp_path /
                                         "real.npz", num=250, data_dir="d", batch_size=64)
  assert line == f"wrote toy reference statistics of 250 images to {tmp_path / 'ref.npz'}"
  extractor = Extractor(toy_net(), 64)
  expected = Reference.of_features(extractor.net, extractor(real[:250]))
  saved = load_reference(tmp_path / "ref.npz", extractor)
  np.testing.assert_allclose(saved.stats.mu, expected.stats.mu, rtol=1e-6)
  np.testing.assert_allclose(saved.stats.sigma, expected.stats.sigma, rtol=1e-6, atol=1e-9)
  scores = evaluate_module.evaluate_files(tmp_path / "drawn.npz", tmp_path / "ref.npz", "toy",
                                          "d", 64)
  want = evaluate(extractor, drawn, saved, labels)
  assert scores.pop("samples") == 200 and set(scores) == set(want)
  assert scores == pytest.approx(want)
  assert specs == [("toy", "d"), ("toy", "d")]


def test_a_huge_batch_size_is_capped_at_the_images(tmp_path, monkeypatch, capsys):
  """`dit-jax eval --batch-size 5000000` padded 100 samples to 5M images and allocated their
  activations (123 GB); a feature batch is never larger than the images it scores."""
  from dit_jax.eval import evaluate as evaluate_module
  net, batches = toy_net(), []

  def recording(params, images_uint8):  # runs once per compiled batch shape
    batches.append(len(images_uint8))
    return toy_net().apply(params, images_uint8)
  net = dataclasses.replace(net, apply=recording)
  monkeypatch.setattr(evaluate_module, "feature_net", lambda spec, data_dir=None: net)
  np.savez(tmp_path / "real.npz", arr_0=random_images(60, seed=1))
  images.save_npz(random_images(30, seed=2), np.arange(30) % 3, tmp_path / "s.npz")
  ref, huge = str(tmp_path / "ref.npz"), ["--features", "toy", "--batch-size", "5000000"]
  cli.main(["eval-ref", "--images", str(tmp_path / "real.npz"), "--out", ref, *huge])
  cli.main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", ref, *huge, "--format",
            "json"])
  assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["samples"] == 30
  assert sorted(batches) == [32, 64]  # 30 samples and 60 real images, rounded up to 8 devices


def test_unreadable_npz_files_are_input_errors_naming_the_file(tmp_path):
  from dit_jax.errors import InputError, MissingFileError
  (tmp_path / "empty.npz").write_bytes(b"")
  (tmp_path / "text.npz").write_text("not arrays\n")
  (tmp_path / "folder.npz").mkdir()
  np.savez(tmp_path / "whole.npz", arr_0=random_images(4))
  (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
  for name in ("empty.npz", "text.npz", "folder.npz", "cut.npz"):
    with pytest.raises(InputError, match=f"{tmp_path / name} is not a readable .npz file"):
      images.load_npz_images(tmp_path / name)
  with pytest.raises(MissingFileError, match=f"{tmp_path / 'missing.npz'} not found"):
    images.load_npz_images(tmp_path / "missing.npz")
  extractor = Extractor(toy_net(), 8)
  for name in ("empty.npz", "text.npz", "cut.npz"):
    with pytest.raises(InputError, match=f"{tmp_path / name} is not a readable .npz file"):
      load_reference(tmp_path / name, extractor)


def test_ensure_classifier_trains_only_when_missing_or_forced(digits_net, monkeypatch):
  data_dir, info = digits_net
  monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
  cached = classifier.ensure_classifier("digits/8", data_dir)
  assert cached == dict(info, cache=str(classifier.cache_dir("digits/8", data_dir)))
  calls = []
  monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: calls.append(a))
  assert classifier.ensure_classifier("digits/8", data_dir, 7, force=True) == cached
  assert calls == [("digits/8", data_dir, 7, print)]


def eval_cli(tmp_path, monkeypatch, drawn, labels=None, real=None):
  """`dit-jax eval` of `drawn` (and labels) against `real` in the toy net; the reference is
  written first, so that the error or note is the eval's."""
  from dit_jax.eval import evaluate as evaluate_module
  monkeypatch.setattr(evaluate_module, "feature_net", lambda spec, data_dir=None: toy_net())
  real = random_images(40, seed=1) if real is None else real
  np.savez(tmp_path / "real.npz", arr_0=real)
  np.savez(tmp_path / "s.npz", arr_0=drawn, **({} if labels is None else {"labels": labels}))
  cli.main(["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "real.npz"),
            "--features", "toy", "--format", "json"])


def test_eval_says_which_metrics_few_samples_skip_and_refuses_an_empty_set(
    tmp_path, monkeypatch, capsys):
  eval_cli(tmp_path, monkeypatch, random_images(3, seed=2), np.arange(3) % 3)
  out = capsys.readouterr()
  assert set(json.loads(out.out)) == {"samples", "fd", "accuracy"}
  assert "IS skipped: 3 samples, it needs >= 10 (one per split)" in out.err
  assert "precision and recall skipped: 3 samples and 40 reference features, k=3" in out.err
  with pytest.raises(SystemExit) as stop:
    eval_cli(tmp_path, monkeypatch, random_images(0, seed=2), np.zeros(0, int))
  assert stop.value.code == 2
  assert f"samples {tmp_path / 's.npz'} hold 0 images" in capsys.readouterr().err


def test_eval_refuses_labels_outside_the_classifier_classes(tmp_path, monkeypatch, capsys):
  with pytest.raises(SystemExit) as stop:
    eval_cli(tmp_path, monkeypatch, random_images(20, seed=2), np.arange(20) % 5)
  assert stop.value.code == 2
  assert "labels 0..4 are outside the 3 classes of the toy classifier" in capsys.readouterr().err


def test_eval_names_the_file_of_the_wrong_image_size(tmp_path, monkeypatch, capsys):
  with pytest.raises(SystemExit):
    eval_cli(tmp_path, monkeypatch, random_images(20, seed=2), real=random_images(
        20, seed=1, shape=(8, 8, 2)))
  err = capsys.readouterr().err
  assert f"reference {tmp_path / 'real.npz'} images are (8, 8, 2) but the toy" in err
  with pytest.raises(SystemExit):
    eval_cli(tmp_path, monkeypatch, random_images(20, seed=2, shape=(8, 8, 2)))
  assert f"samples {tmp_path / 's.npz'} are (8, 8, 2) but the toy" in capsys.readouterr().err


def test_eval_of_a_garbage_npz_names_the_file(tmp_path, monkeypatch, capsys):
  from dit_jax.eval import evaluate as evaluate_module
  monkeypatch.setattr(evaluate_module, "feature_net", lambda spec, data_dir=None: toy_net())
  (tmp_path / "garbage.npz").write_text("not arrays\n")
  np.savez(tmp_path / "good.npz", arr_0=random_images(20))
  for samples, ref in [("garbage.npz", "good.npz"), ("good.npz", "garbage.npz")]:
    with pytest.raises(SystemExit) as stop:
      cli.main(["eval", "--samples", str(tmp_path / samples), "--ref", str(tmp_path / ref),
                "--features", "toy"])
    assert stop.value.code == 2
    assert f"{tmp_path / 'garbage.npz'} is not a readable .npz file" in capsys.readouterr().err


def test_eval_with_samples_reference_and_feature_net_in_a_bucket_scores_as_locally(
    digits_net, gcs_bucket, tmp_path, capsys, monkeypatch):
  """`eval-ref --out gs://...` and `eval --samples gs://... --ref gs://... --data-dir gs://...`
  (the data set and the cached classifier in the bucket): the reference and the scores equal
  those of the local files; nothing lands in a local `gs:` folder."""
  monkeypatch.chdir(tmp_path)
  local_dir, bucket_dir = digits_net[0], f"{gcs_bucket}/tfds"
  cache = f"{classifier.FEATURE_NETS}/digits_8"
  for name in ("digits", f"{cache}/classifier.npz", f"{cache}/classifier.json"):
    paths.filesystem(bucket_dir).put(f"{local_dir}/{name}", paths.object_name(
        f"{bucket_dir}/{name}"), recursive=True)
  test, labels = data.read_images("digits/8", "test", local_dir)
  scores = []
  for root, data_dir in ((str(tmp_path), local_dir), (gcs_bucket, bucket_dir)):
    images.save_npz(test[:100], labels[:100], f"{root}/s.npz")
    net = ["--features", "digits/8", "--data-dir", data_dir]
    cli.main(["eval-ref", *net, "--data", "digits/8", "--split", "train", "--num", "300",
              "--out", f"{root}/ref.npz"])
    assert f"300 images to {root}/ref.npz" in capsys.readouterr().out
    cli.main(["eval", "--samples", f"{root}/s.npz", "--ref", f"{root}/ref.npz", *net,
              "--format", "json"])
    scores.append(json.loads(capsys.readouterr().out))
  with paths.open_read(f"{gcs_bucket}/ref.npz") as f, np.load(f) as remote, \
      np.load(tmp_path / "ref.npz") as local:
    assert sorted(remote.files) == sorted(local.files)
    for key in local.files:
      np.testing.assert_array_equal(remote[key], local[key])
  assert scores[0] == scores[1] and scores[0]["samples"] == 100
  with pytest.raises(SystemExit):
    cli.main(["eval", "--samples", f"{gcs_bucket}/missing.npz", "--ref", f"{gcs_bucket}/ref.npz",
              "--features", "digits/8"])
  assert f"{gcs_bucket}/missing.npz does not exist" in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz", "s.npz"]


def test_a_classifier_trained_into_a_bucket_data_dir_is_the_local_one(
    digits_net, gcs_bucket, tmp_path, monkeypatch, capsys):
  """`train-classifier --data-dir gs://...`: its engine run, classifier.npz and .json land in
  the bucket's feature-net cache, and the net loaded from there has the weights of the same
  training in a local data_dir."""
  monkeypatch.chdir(tmp_path)
  local_dir, bucket_dir = tmp_path / "tfds", f"{gcs_bucket}/tfds"
  shutil.copytree(f"{digits_net[0]}/digits", local_dir / "digits")  # the data, not the cache
  paths.upload_tree(local_dir, bucket_dir)
  for data_dir in (str(local_dir), bucket_dir):
    cli.main(["train-classifier", "--data", "digits/8", "--data-dir", data_dir, "--steps", "4"])
  assert f"in {bucket_dir}/{classifier.FEATURE_NETS}/digits_8" in capsys.readouterr().out
  cache = paths.list_names(classifier.cache_dir("digits/8", bucket_dir))
  assert {"classifier.npz", "classifier.json", "run"} <= set(cache)
  nets = [classifier.classifier_net("digits/8", d, train=False) for d in (local_dir, bucket_dir)]
  assert nets[0].identity == nets[1].identity
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tfds"]
