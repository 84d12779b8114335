"""One process of a multi-process CPU run (launched by tests/test_multihost.py).

    python worker.py PORT NUM_PROCESSES PROCESS_ID DATA_DIR WORKDIR MESH_JSON
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main():
  port, count, index, data_dir, workdir, mesh = sys.argv[1:]
  from dit_jax import parallel
  parallel.initialize_distributed(f"localhost:{port}", int(count), int(index))
  from dit_jax.config import base_config
  from dit_jax.training import denoiser
  config = base_config()
  config.model.update(name="DiT", patch_size=2, hidden_size=32, depth=1, num_heads=2,
                      num_classes=10)
  config.data.update(name="digits/8", data_dir=data_dir, batch_size=16, num_threads=1)
  config.optim.update(lr=2e-3, warmup_steps=2)
  config.train.update(steps=4, log_every=2, checkpoint_every=4, sample_every=4,
                      samples_per_class=1, ema_decay=0.9)
  config.sample.update(method="euler", steps=2)
  config.mesh.update(json.loads(mesh))
  state = denoiser.train_and_evaluate(config, workdir)
  shard = state.params["blocks_0"]["mlp"]["fc1"]["kernel"]
  print(json.dumps(dict(process=jax.process_index(), devices=jax.device_count(),
                        local_devices=jax.local_device_count(), step=int(state.step),
                        spec=str(shard.sharding.spec),
                        local_shards=len(shard.addressable_shards))))


if __name__ == "__main__":
  main()
