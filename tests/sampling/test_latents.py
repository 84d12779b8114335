"""The latent pipeline: extract-latents (flips, chunks, resumption), the latent data set as
training batches (posterior sampling, scaling, checkpointable state), and decoder_for."""
import socket

import jax
import ml_collections
import numpy as np
import pytest

from dit_jax import data, paths, state_files
from dit_jax.config import base_config
from dit_jax.convert.vae import abstract_params, load_vae, save_vae
from dit_jax.data import latent_source
from dit_jax.data.pipeline import preprocess
from dit_jax.models.vae import AutoencoderKL
from dit_jax.sampling import latents

SPLIT = "test"  # digits/8 test: a few hundred 8x8 gray images
VAE = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                    latent_channels=2, norm_num_groups=4, scaling_factor=0.7, shift_factor=0.2)


def _no_network(*args, **kwargs):
  raise AssertionError("the latent pipeline tried to use the network")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """digits/8 prepared offline, and a random-weight VAE folder (no init: compiling is slow)."""
  root = tmp_path_factory.mktemp("latents")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", _no_network)
    data.prepare("digits/8", str(root / "tfds"))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                        abstract_params(VAE))
  save_vae(root / "vae", VAE, params)
  return dict(root=root, data_dir=str(root / "tfds"), vae=str(root / "vae"), params=params)


def _extract(setup, out, **kw):
  cfg = dict(name="digits/8", split=SPLIT, data_dir=setup["data_dir"])
  return latents.extract_latents(cfg, setup["vae"], out, flip=True, batch_size=32,
                                 chunk_size=128, progress=False, **kw)


@pytest.fixture(scope="module")
def extracted(setup):
  out = setup["root"] / "full"
  info = _extract(setup, out)
  return out, info


def _files(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


def test_moments_are_the_encodings_of_images_and_their_flips(setup, extracted):
  out, info = extracted
  source = data.open_source("digits/8", SPLIT, setup["data_dir"])
  assert info["num_examples"] == 2 * len(source) and info["latent_shape"] == [4, 4, 2]
  stored = latent_source.LatentSource(out)
  picks = [0, 1, 2, 3, 255, 256, len(stored) - 1]
  images = []
  for i in picks:
    image = preprocess(source[i // 2], image_size=None, keep={})["image"]
    images.append(image[:, ::-1] if i % 2 else image)
    assert stored[i]["label"] == source[i // 2]["label"]
  dist = VAE.apply({"params": setup["params"]}, np.stack(images), method=VAE.encode)
  want = np.concatenate([dist.mean, dist.logvar], axis=-1)
  got = np.stack([stored[i]["moments"] for i in picks])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert not np.allclose(got[0], got[1])  # the flip is encoded, not copied


def test_interrupted_extraction_resumes_to_the_same_files(setup, extracted):
  out = setup["root"] / "resumed"
  first = _extract(setup, out, max_chunks=2)  # "interrupted" after two chunks
  assert first["chunks_done_now"] == 2
  with pytest.raises(FileNotFoundError, match="unfinished"):
    latent_source.LatentSource(out)
  # A crash after writing chunk 1 but before its marker, with a stray temporary file:
  (out / "chunk-000001.done").unlink()
  (out / ".moments-000002.npy.tmp-123").write_bytes(b"partial")  # as atomic_writer names it
  second = _extract(setup, out)
  assert second["chunks_done_now"] == second["chunks_of_this_process"] - 1
  assert _files(out) == _files(extracted[0])
  assert not (out / ".moments-000002.npy.tmp-123").exists()  # cleared before chunk 2 is written


def test_processes_split_the_chunks(setup, extracted):
  out = setup["root"] / "two_processes"
  a = _extract(setup, out, process_index=0, process_count=2)
  b = _extract(setup, out, process_index=1, process_count=2)
  assert a["chunks_done_now"] + b["chunks_done_now"] == a["chunks_of_this_process"] + b[
      "chunks_of_this_process"] == latent_source.read_meta(out)["num_chunks"]
  assert _files(out) == _files(extracted[0])


def test_extract_latents_of_a_training_config(setup, extracted):
  """latents.extract_latents_of, the call of `dit-jax extract-latents`: the config's data
  section with its split replaced writes the same files as extract_latents."""
  config = ml_collections.ConfigDict(dict(data=dict(name="digits/8", split="train",
                                                    data_dir=setup["data_dir"])))
  out = setup["root"] / "of_config"
  line = latents.extract_latents_of(config, setup["vae"], out, split=SPLIT, flip=True,
                                    batch_size=32, chunk_size=128, progress=False)
  assert _files(out) == _files(extracted[0])
  meta = latent_source.read_meta(out)
  assert line.startswith(f"encoded {extracted[1]['encoded']} examples in ")
  assert line.endswith(f"latents {tuple(meta['latent_shape'])} x {meta['num_examples']} in "
                       f"{out}")


def test_extract_latents_of_reports_the_chunks_done_now_and_in_all(setup):
  """`--max-chunks 2`: the line counts the chunks encoded now and those done of all."""
  config = ml_collections.ConfigDict(dict(data=dict(name="digits/8", split=SPLIT,
                                                    data_dir=setup["data_dir"])))
  out = setup["root"] / "two_chunks"
  line = latents.extract_latents_of(config, setup["vae"], out, flip=True, batch_size=32,
                                    chunk_size=128, progress=False, max_chunks=2)
  total = latent_source.read_meta(out)["num_chunks"]
  assert (f"; 2 chunks encoded now, 2 of the {total} chunks of this process done; rerun to "
          f"encode the other {total - 2}; latents") in line


def test_other_arguments_on_the_same_out_dir_are_refused(setup, extracted):
  cfg = dict(name="digits/8", split=SPLIT, data_dir=setup["data_dir"])
  with pytest.raises(ValueError, match="another extraction.*flip"):
    latents.extract_latents(cfg, setup["vae"], extracted[0], flip=False, batch_size=32,
                            chunk_size=128, progress=False)


def _latent_data(setup, out, **kw):
  return dict(name="digits/8", split=SPLIT, data_dir=setup["data_dir"], latents=str(out),
              batch_size=64, image_size=8, latent_downsample=2, latent_channels=2,
              num_threads=1, **kw)


def test_batches_are_scaled_posterior_samples(setup, extracted):
  out, _ = extracted
  stored = latent_source.LatentSource(out)
  batch = next(data.make_iterator(_latent_data(setup, out, shuffle=False),
                                  process_index=0, process_count=1))
  assert batch["image"].shape == (64, 4, 4, 2) and batch["image"].dtype == np.float32
  moments = np.stack([stored[i]["moments"] for i in range(64)])
  np.testing.assert_array_equal(batch["label"], [stored[i]["label"] for i in range(64)])
  mean, logvar = np.split(moments, 2, axis=-1)
  eps = (batch["image"] / VAE.scaling_factor + VAE.shift_factor - mean) / np.exp(0.5 * logvar)
  assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1.0) < 0.1  # z = mean + std * N(0, 1)


def test_latent_iterator_resumes_and_redraws_noise_each_epoch(setup, extracted):
  out, _ = extracted
  cfg = _latent_data(setup, out, shuffle=False)
  it = data.make_iterator(cfg, process_index=0, process_count=1)
  next(it)
  state = it.get_state()
  want = next(it)
  again = data.make_iterator(cfg, process_index=0, process_count=1)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["image"], want["image"])
  per_epoch = len(latent_source.LatentSource(out)) // 64
  first = data.make_dataset(cfg, process_index=0, process_count=1)
  a, b = first[0], first[per_epoch]  # same examples (no shuffle), next epoch
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.allclose(a["image"], b["image"])


def test_config_must_match_the_latents(setup, extracted):
  out, _ = extracted
  with pytest.raises(ValueError, match="data.latent_channels=4.*set data.latent_channels=2"):
    data.make_iterator(dict(_latent_data(setup, out), latent_channels=4), process_index=0,
                       process_count=1)


def test_decoder_for_inverts_the_scaling(setup, extracted):
  out, _ = extracted
  config = base_config()
  config.data.update(_latent_data(setup, out))
  decode = latents.decoder_for(config)
  vae, params = load_vae(setup["vae"])
  z = np.random.default_rng(1).standard_normal((2, 4, 4, 2)).astype(np.float32)
  want = np.clip(vae.apply({"params": params}, z, method=vae.decode), -1, 1)
  np.testing.assert_allclose(decode((z - 0.2) * 0.7), want, atol=1e-5)
  pixels = base_config()
  pixels.data.update(name="digits/8", latent_downsample=1)
  assert latents.decoder_for(pixels) is None


def test_training_on_latents_decodes_its_samples(setup, extracted, tmp_path):
  """train_and_evaluate on the latent folder: the model sees 4x4x2 latents, and the sample
  grid is decoded back to 8x8 pixel digits."""
  from PIL import Image

  from dit_jax.training import denoiser
  out, _ = extracted
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=32, depth=1, num_heads=2,
                      num_classes=10)
  config.data.update(name="digits/8", split=SPLIT, data_dir=setup["data_dir"], batch_size=16,
                     image_size=8, latent_downsample=2, latent_channels=2, latents=str(out),
                     vae=setup["vae"])
  config.train.update(steps=2, log_every=1, checkpoint_every=2, sample_every=2,
                      samples_per_class=1)
  config.sample.update(method="euler", steps=2)
  state = denoiser.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 2
  assert state.params["x_embedder"]["kernel"].shape == (2 * 2 * 2, 32)  # 4x4x2 latents
  grid = np.asarray(Image.open(tmp_path / "samples" / "step_0000002.png"))
  # 10 rows of decoded 8x8 tiles with 1-pixel borders, upscaled 8x (4x4 latents would be 816).
  assert grid.shape[:2] == ((10 * (8 + 1) + 1) * 8, (1 * (8 + 1) + 1) * 8)


def test_a_resume_with_other_vae_weights_in_the_same_folder_is_refused(setup, extracted,
                                                                      tmp_path, capsys):
  """A sample set of a latent run and an extraction record their VAE by a digest of its
  weights: a VAE trained again (or another copied) into the same folder is refused on resume,
  naming the field old -> new, instead of mixing samples decoded (latents encoded) by two."""
  import shutil

  from dit_jax import cli, parallel
  from dit_jax.sampling import images
  from dit_jax.training import denoiser
  vae = shutil.copytree(setup["vae"], tmp_path / "vae")
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=16, depth=1, num_heads=2,
                      num_classes=10)
  config.data.update(_latent_data(setup, extracted[0], vae=str(vae)), batch_size=16)
  config.train.update(steps=1, checkpoint_every=1, sample_every=0)
  denoiser.train_and_evaluate(config, tmp_path / "run")
  out = tmp_path / "s.npz"
  argv = ["sample", "--workdir", str(tmp_path / "run"), "--out", str(out), "--num", "4",
          "--chunk-size", "2", "--batch-size", "2", "--steps", "1"]

  def killed(*args, **kwargs):  # every chunk drawn, the set not yet written
    raise KeyboardInterrupt
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(images, "save_npz_chunks", killed)
    with pytest.raises(SystemExit):
      cli.main(argv)
  extract = ["extract-latents", "--config", "configs/quickstart.py", "--vae", str(vae),
             "--out", str(tmp_path / "lat"), "--config.data.split=test", "--chunk-size", "128",
             f"--config.data.data_dir={setup['data_dir']}", "--max-chunks", "1"]
  cli.main(extract)
  capsys.readouterr()
  other = jax.tree.map(lambda p: p + 0.01, setup["params"])
  save_vae(vae, VAE, other)  # a VAE trained again into the same folder
  old, new = parallel.params_digest(setup["params"]), parallel.params_digest(other)
  with pytest.raises(SystemExit) as stop:
    cli.main(argv)
  err = capsys.readouterr().err
  assert stop.value.code == 2 and f"decoder.vae_params_sha256: {old} -> {new}" in err
  assert "the VAE's weights differ" in err and not out.exists()
  with pytest.raises(SystemExit) as stop:
    cli.main(extract)
  err = capsys.readouterr().err
  assert stop.value.code == 2 and f"'vae_params_sha256': ('{old}', '{new}')" in err
  save_vae(vae, VAE, setup["params"])  # the recorded VAE back: both resume
  cli.main(argv)
  assert "(0 drawn now, 4 from earlier chunks" in capsys.readouterr().out
  cli.main(extract)


def test_a_damaged_latent_chunk_or_vae_weight_file_is_named_with_the_fix(setup, extracted,
                                                                          tmp_path, capsys):
  """A moments chunk cut short though marked done: `train` names it and how to encode it again
  (was 'mmap length is greater than file size' with a traceback). A train-vae VAE folder whose
  params.safetensors is cut short: extract-latents names the file (was a SafetensorError)."""
  import shutil

  from dit_jax import cli
  from dit_jax.sampling import vae_files
  lat = shutil.copytree(extracted[0], tmp_path / "lat")
  moments = latent_source.chunk_paths(lat, 1)["moments"]
  moments.write_bytes(moments.read_bytes()[:200])
  flags = [f"--config.{o}" for o in (
      "model.depth=1", "model.hidden_size=16", "model.num_heads=2", "train.steps=1",
      "data.batch_size=8", "train.sample_every=0", "evals.samples.every=0")]
  train = ["train", "--config", "configs/quickstart.py", "--workdir", str(tmp_path / "run"),
           *flags, *[f"--config.data.{k}={v}" for k, v in
                     _latent_data(setup, lat, vae=setup["vae"]).items()]]
  with pytest.raises(SystemExit) as stop:
    cli.main(train)
  err = capsys.readouterr().err
  assert stop.value.code == 2 and "Traceback" not in err
  assert f"{moments} does not load whole" in err
  assert "delete it and chunk-000001.done, then rerun the same `dit-jax extract-latents`" in err

  vae = tmp_path / "vae"
  vae_files.save_vae(vae, VAE, setup["params"])  # the format `train-vae` writes
  weights = vae / vae_files.WEIGHTS
  weights.write_bytes(weights.read_bytes()[:300])
  with pytest.raises(SystemExit) as stop:
    cli.main(["extract-latents", "--config", "configs/quickstart.py", "--vae", str(vae),
              "--out", str(tmp_path / "lat2"), f"--config.data.data_dir={setup['data_dir']}"])
  err = capsys.readouterr().err
  assert stop.value.code == 2 and "Traceback" not in err
  assert f"{weights} is not a readable .safetensors file" in err


def test_latents_extracted_into_a_bucket_train_as_the_local_ones(setup, extracted, gcs_bucket,
                                                                 tmp_path, monkeypatch):
  """`extract-latents --out gs://...` by two processes (each its own chunks), the VAE read from
  the bucket: the bucket holds the local extraction's chunk files byte for byte, latents.json
  names the gs:// VAE; each of two training processes reads from the bucket the batches it
  reads locally, and a short run trains on them and decodes its samples with that VAE."""
  from dit_jax.training import denoiser
  monkeypatch.chdir(tmp_path)
  vae, out, local = f"{gcs_bucket}/vae", f"{gcs_bucket}/latents", extracted[0]
  paths.filesystem(vae).put(setup["vae"], paths.object_name(vae), recursive=True)
  for index in (0, 1):
    _extract(dict(setup, vae=vae), out, process_index=index, process_count=2)
  names = sorted(p.name for p in local.iterdir())
  assert sorted(paths.list_names(out)) == names
  for name in set(names) - {latent_source.META}:
    assert state_files.read_bytes(f"{out}/{name}") == (local / name).read_bytes(), name
  assert latent_source.read_meta(out) == dict(latent_source.read_meta(local), vae=vae)
  for index in (0, 1):
    batches = [data.make_iterator(_latent_data(setup, where), process_index=index,
                                  process_count=2) for where in (out, local)]
    for _ in range(2):
      got, want = next(batches[0]), next(batches[1])
      for key in ("image", "label"):
        np.testing.assert_array_equal(got[key], want[key])
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=16, depth=1, num_heads=2,
                      num_classes=10)
  config.data.update(_latent_data(setup, out), batch_size=16)  # the VAE: latents.json's
  config.train.update(steps=2, log_every=1, checkpoint_every=2, sample_every=2,
                      samples_per_class=1)
  config.sample.update(method="euler", steps=2)
  assert int(denoiser.train_and_evaluate(config, str(tmp_path / "run")).step) == 2
  assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
  assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no local gs: folder
