"""One process of a two-process VAE training that process 1 alone is told to stop (SIGNAL,
TERM or INT, once the run has logged a step); launched by tests/test_multihost.py.

    python vae_worker.py PORT NUM_PROCESSES PROCESS_ID DATA_DIR WORKDIR SIGNAL
"""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

STEPS = 400


def signal_once_training(workdir: Path, signum: int):
  while not (workdir / "metrics.jsonl").exists():
    time.sleep(0.05)
  os.kill(os.getpid(), signum)


def main():
  port, count, index, data_dir, workdir, name = sys.argv[1:]
  from dit_jax import parallel
  parallel.initialize_distributed(f"localhost:{port}", int(count), int(index))
  from dit_jax.config import load_config
  from dit_jax.engine import Preempted
  from dit_jax.training.autoencoder import train_vae
  config = load_config(str(Path(__file__).parents[2] / "configs" / "vae.py"))
  # The smallest VAE train_vae runs (one level, no attention or 1x1 quant convs): what is
  # tested is how the processes stop, not the model.
  config.vae = dict(block_out_channels=(4,), layers_per_block=1, latent_channels=2,
                    norm_num_groups=2, in_channels=1, out_channels=1,
                    mid_block_attention=False, use_quant_conv=False, use_post_quant_conv=False)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=8, num_threads=1)
  config.train.update(steps=STEPS, log_every=1, checkpoint_every=10_000)
  config.mesh.update(data=8, rules="dp")
  if int(index) == 1:
    threading.Thread(target=signal_once_training, daemon=True,
                     args=(Path(workdir), signal.Signals[f"SIG{name}"])).start()
  try:
    train_vae(config, workdir)
  except Preempted as stop:
    print(json.dumps(dict(process=jax.process_index(), step=stop.step)))
    sys.exit(stop.exit_status)
  print(json.dumps(dict(process=jax.process_index(), step=None)))


if __name__ == "__main__":
  main()
