"""A run's small files through `dit-jax train`: damaged state files are named with their fix
(or, for an append-only log's cut-short last line, dropped with a warning); the workdir lock
is taken over atomically and never left empty; a full disk is an I/O error (exit 1)."""
import json

import pytest

from dit_jax import cli
from dit_jax.engine.run_log import read_history

TINY_RUN = ["--config", "configs/quickstart.py", "--config.train.steps=2",
            "--config.model.depth=1", "--config.model.hidden_size=16",
            "--config.model.num_heads=2", "--config.train.sample_every=0",
            "--config.data.batch_size=8", "--config.evals.samples.every=0"]


def train(workdir, *flags):
  cli.main(["train", "--workdir", str(workdir), *TINY_RUN, *flags])


def exit_status(capsys, workdir, *flags) -> tuple[int, str]:
  with pytest.raises(SystemExit) as stop:
    train(workdir, *flags)
  out = capsys.readouterr()
  return stop.value.code, out.out + out.err


def test_a_cut_short_metrics_line_is_dropped_and_a_damaged_config_is_named(tmp_path, capsys):
  workdir = tmp_path / "run"
  train(workdir)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "loss": 0.')  # what a kill during an append leaves
  capsys.readouterr()
  train(workdir, "--config.train.steps=4")  # resumes past it
  out = capsys.readouterr().out
  assert f"{workdir / 'metrics.jsonl'}: dropped a partial last line" in out
  history = read_history(workdir)
  assert [h["step"] for h in history if "loss" in h][-1] == 4
  assert (workdir / "metrics.jsonl").read_text().endswith("}\n")

  (workdir / "config.json").write_text('{"model": {"na')  # a write cut short
  status, out = exit_status(capsys, workdir, "--config.train.steps=6")
  assert status == 2 and "Traceback" not in out
  assert f"{workdir / 'config.json'} (the run's recorded config) is damaged" in out
  assert "delete it to resume" in out
