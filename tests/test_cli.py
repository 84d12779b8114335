import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from dit_jax import cli
from dit_jax.models import flops
from dit_jax.models.dit import dit
from dit_jax.sampling import runs


def run(capsys, *argv):
  cli.main(list(argv))
  return capsys.readouterr().out


def test_json_rows(capsys):
  rows = json.loads(run(capsys, "flops", "--format", "json", "--models", "XL/2,S/8"))
  assert [r["model"] for r in rows] == ["DiT-XL/2", "DiT-S/8"]
  xl = rows[0]
  assert xl["patch_size"] == 2 and round(xl["params"] / 1e6) == 675
  assert xl["gflops"] == pytest.approx(sum(flops.dit_flops(dit("XL/2"), 32, 32, 4).values()) / 1e9)
  assert xl["paper_gflops"] == 118.64


def test_default_table_lists_all_presets_with_paper_column(capsys):
  lines = run(capsys, "flops").strip().splitlines()
  assert "paper Gflops" in lines[0] and len(lines) == 13
  assert lines[-3].split()[:4] == ["DiT-XL/2", "2", "256", "118.621"]


def test_csv_and_markdown(capsys):
  rows = list(csv.DictReader(io.StringIO(run(capsys, "flops", "--format", "csv"))))
  assert len(rows) == 12 and float(rows[4]["gflops"]) == pytest.approx(5.565, abs=1e-3)
  markdown = run(capsys, "flops", "--format", "markdown", "--models", "B/4").splitlines()
  assert markdown[0].startswith("| model |") and markdown[2].startswith("| DiT-B/4 | 4 | 64 |")


def test_image_size_changes_tokens(capsys):
  rows = json.loads(run(capsys, "flops", "--format", "json", "--models", "XL/2",
                        "--image-size", "512"))
  assert rows[0]["tokens"] == 1024 and "paper_gflops" not in rows[0]
  assert rows[0]["gflops"] == pytest.approx(524.60, rel=1e-3)


def test_xla_column(capsys):
  rows = json.loads(run(capsys, "flops", "--format", "json", "--models", "S/8", "--xla"))
  assert 1.0 < rows[0]["xla_gflops"] / rows[0]["gflops"] < 1.02


def test_plot_is_written(tmp_path, capsys):
  path = tmp_path / "flops.png"
  run(capsys, "flops", "--plot", str(path))
  image = np.asarray(Image.open(path).convert("L"))
  assert image.shape[1] > image.shape[0] > 300 and image.std() > 10  # a drawn figure, not blank


def test_a_plot_for_a_bucket_lands_there_whole(gcs_bucket, tmp_path, monkeypatch, capsys):
  from dit_jax import state_files
  monkeypatch.chdir(tmp_path)
  run(capsys, "flops", "--models", "B/4,B/8", "--plot", f"{gcs_bucket}/plots/flops.svg")
  assert state_files.read_bytes(f"{gcs_bucket}/plots/flops.svg").startswith(b"<?xml")
  assert list(tmp_path.iterdir()) == []  # not a local gs: folder


def test_config_with_overrides(capsys):
  rows = json.loads(run(capsys, "flops", "--format", "json", "--config", "configs/dit.py:DiT-B/4",
                        "--config.model.conditioning=cross_attn"))
  expected = flops.dit_flops(dit("DiT-B/4", conditioning="cross_attn"), 32, 32, 4)
  assert rows[0]["conditioning"] == "cross_attn"
  assert rows[0]["gflops"] == pytest.approx(sum(expected.values()) / 1e9)


def test_bad_override_names_the_field():
  with pytest.raises(SystemExit, match="config has no field 'depthx'"):
    cli.main(["flops", "--config", "configs/dit.py:DiT-B/4", "--config.model.depthx=3"])
  with pytest.raises(SystemExit, match="unknown DiT model name 'DiT-Q/2'"):
    cli.main(["flops", "--models", "Q/2"])


def test_caption_model_trains_samples_its_grid_and_samples_from_captions(tmp_path):
  """A caption-conditioned MM-DiT through the CLI: the training grid has one row per caption
  of the data, and `sample --captions` writes one group per caption."""
  from dit_jax import data
  data_dir = str(tmp_path / "tfds")
  data.prepare("shapes/multi_fixed_24", data_dir)
  run = tmp_path / "run"
  cli.main(["train", "--config", "configs/mmdit.py:mmdit_hybrid", "--workdir", str(run),
            f"--config.data.data_dir={data_dir}", "--config.data.batch_size=8",
            "--config.model.hidden_size=32", "--config.model.num_heads=2",
            "--config.model.depth_double=1", "--config.model.depth_single=1",
            "--config.model.text_depth=1",
            "--config.train.steps=2", "--config.train.log_every=1",
            "--config.train.sample_every=2", "--config.train.samples_per_class=2",
            "--config.sample.steps=2", "--config.evals.composition.num_samples=8"])
  grid = np.asarray(Image.open(run / "samples" / "step_0000002.png"))
  assert grid.shape[:2] == ((8 * 25 + 1) * 2, (2 * 25 + 1) * 2)  # 8 captions x 2, 24px at 2x
  out = tmp_path / "captions.npz"
  cli.main(["sample", "--workdir", str(run), "--captions",
            "a red circle at the top left;a blue square in the centre", "--per-class", "2",
            "--steps", "2", "--out", str(out)])
  saved = np.load(out)
  assert saved["arr_0"].shape == (4, 24, 24, 3) and saved["arr_0"].dtype == np.uint8
  assert list(saved["captions"][::2]) == ["a red circle at the top left",
                                          "a blue square in the centre"]
  with pytest.raises(SystemExit, match="conditioned on captions: pass --captions"):
    cli.main(["sample", "--workdir", str(run), "--out", str(out)])
  check_composition_evaluator(run)


def check_composition_evaluator(run):
  """The config's composition evaluator logged, at the last step, the exact check of its
  captions sampled from the EMA weights of that step with the noise it documents."""
  import jax
  from dit_jax import flow, parallel
  from dit_jax.data.tokenizers import make_tokenizer
  from dit_jax.engine.run_log import read_history
  from dit_jax.eval import composition
  from dit_jax.models import create_model
  from dit_jax.sampling.sampler import ImageSampler, sample_in_batches
  logged = [h for h in read_history(run) if "eval/object" in h]
  assert [h["step"] for h in logged] == [2]
  config, state = runs.load_run(run, parallel.ShardingPlan.create(
      json.loads((run / "config.json").read_text())["mesh"]))
  shapes_config = composition.shapes_config(config.data.name)
  objects = composition.split_objects(shapes_config, "test", 8)
  tokens, mask = make_tokenizer("words:shapes").encode_batch(list(objects["captions"]), 24)
  sampler = ImageSampler(create_model(config.model), flow.make_objective(config.objective),
                         config.sample, (24, 24, 3), parallel.ShardingPlan.create(config.mesh))
  samples = np.concatenate(list(sample_in_batches(
      sampler, state.ema_params, {"text_tokens": tokens, "text_mask": mask}, 8,
      jax.random.PRNGKey(config.seed + 3))))
  expected = composition.scores(composition.check_images(samples, objects),
                                composition.unseen(objects["captions"], shapes_config))
  assert {key: logged[0][f"eval/{key}"] for key in expected} == expected


def test_sample_of_a_text_feature_unet_asks_for_precomputed_embeddings(tmp_path, monkeypatch):
  """The U-Net's `text` is float features of a frozen encoder: captions cannot be tokenised
  for it (an MM-DiT reading `text_tokens` can, test above)."""
  from dit_jax.config import base_config
  config = base_config()
  config.model = {"name": "UNet-small", "num_classes": 0, "text_dim": 6}
  monkeypatch.setattr(runs, "load_run", lambda workdir, plan=None: (config, None))
  with pytest.raises(SystemExit, match="precomputed text embeddings"):
    cli.main(["sample", "--workdir", str(tmp_path), "--captions", "a red circle",
              "--out", str(tmp_path / "x.png")])


@pytest.mark.parametrize("method, evaluations", [("ddpm", 3), ("heun", 6)])
def test_bench_times_the_sampler(capsys, method, evaluations):
  """`bench --sample`: the lax.scan sampler of a preset, guided (the batch doubled); its
  TFLOP/s are the model's flop count x evaluations x 2 x batch over the measured time. DDPM
  samples the published objective (learned variance) of a learn_sigma preset."""
  from dit_jax.models.dit import dit
  row = json.loads(run(capsys, "bench", "--model", "S/8", "--image-size", "64", "--batch-size",
                       "8", "--sample", f"{method}:3", "--steps", "1", "--format", "json"))
  macs = sum(dit("DiT-S/8").forward_flops(8, 8, 4).values())
  assert row["evaluations"] == evaluations and row["input"] == [8, 8, 4]
  expected = 2 * macs * evaluations * 2 * 8 / row["batch_s"] / row["devices"] / 1e12
  assert row["tflops_per_s"] == pytest.approx(expected, rel=1e-6)
  assert row["images_per_s"] == pytest.approx(8 / row["batch_s"], rel=1e-6)


def test_bench_times_the_model_of_a_config(capsys):
  """`bench --config` runs any family; its TFLOP/s come from that model's own flop count."""
  from dit_jax.config import load_config
  from dit_jax.models import create_model
  overrides = ["--config.model.hidden_size=32", "--config.model.num_heads=2",
               "--config.model.text_width=16", "--config.model.text_heads=2",
               "--config.model.depth_double=1", "--config.model.depth_single=1",
               "--config.model.text_depth=1"]
  row = json.loads(run(capsys, "bench", "--config", "configs/mmdit.py:mmdit_hybrid",
                       *overrides, "--batch-size", "8", "--steps", "1", "--format", "json"))
  config = cli.apply_overrides(load_config("configs/mmdit.py:mmdit_hybrid"),
                               [o[len("--config."):] for o in overrides])
  model = create_model(config.model)
  assert row["model"] == config.model.name and row["input"] == [24, 24, 3]
  macs = sum(model.forward_flops(24, 24, 3).values())
  expected = 3 * 2 * macs * 8 / (row["step_ms"] / 1000) / row["devices"] / 1e12
  assert row["train_tflops_per_s"] == pytest.approx(expected, rel=1e-6)
  with pytest.raises(SystemExit, match="with --config set them in the config"):
    cli.main(["bench", "--config", "configs/mmdit.py:mmdit_hybrid", "--dtype", "float32"])
