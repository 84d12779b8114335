import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from dit_jax import cli, flops
from dit_jax.models.dit import dit


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
