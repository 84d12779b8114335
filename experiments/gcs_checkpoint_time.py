"""Save and restore time of a DiT-B/2 train state (float32 parameters, EMA and AdamW's two
moments: what `dit-jax train` checkpoints) on a local disk and in a bucket, through the
engine's Checkpointer (Orbax, OCDBT, tensorstore).

    python experiments/gcs_checkpoint_time.py --emulator        # a local fake-gcs-server
    python experiments/gcs_checkpoint_time.py --bucket gs://B   # a real bucket (credentials
                                                                # from the environment)

--emulator starts tests/gcs_emulator.py's server with its objects on the same disk as the
local runs (`-backend filesystem`), so the difference is the object-store protocol (HTTP
requests, no rename, commit markers), not the medium. Writes a markdown table to stdout and
to experiments/results/gcs_checkpoint_time.md.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gcs_checkpoint_time.md"


def start_emulator(root: Path) -> str:
  sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
  import gcs_emulator  # the test fixture's server: a dev dependency, not the library's
  port = gcs_emulator.free_port()
  os.environ.update(gcs_emulator.environment(port))  # before gcsfs / fsspec are imported
  server = gcs_emulator.Emulator(port, root, backend="filesystem").start()
  return server, server.create_bucket("dit-jax-timing")


def train_state():
  import jax
  from dit_jax import engine, flow, parallel
  from dit_jax.config import base_config, model_section
  from dit_jax.models import create_model
  from dit_jax.training import denoiser
  config = base_config()
  model = create_model(model_section("DiT-B/2"))
  task = denoiser.denoiser_task(model, flow.make_objective(config.objective), (32, 32, 4))
  plan = parallel.ShardingPlan.create(dict(data=1), devices=jax.devices()[:1])
  optimizer, _ = engine.make_optimizer(config.optim, 1000)
  state = engine.init_state(task, optimizer, jax.random.PRNGKey(0), plan,
                            engine.ema_of(config.train))
  return jax.block_until_ready(state)


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def measure(directory: str, state, repeats: int) -> tuple[list[float], list[float]]:
  import jax
  from dit_jax.engine import checkpoint
  saves, restores = [], []
  abstract = checkpoint.abstract_like(state)
  for step in range(1, repeats + 1):
    with checkpoint.Checkpointer(directory, keep=1) as ckpt:
      saves.append(timed(lambda: (ckpt.save(step, state), ckpt.wait())))
    with checkpoint.Checkpointer(directory, keep=1) as ckpt:
      restores.append(timed(lambda: jax.block_until_ready(ckpt.restore(abstract, step)[0])))
  return saves, restores


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument("--emulator", action="store_true")
  where.add_argument("--bucket", help="gs://BUCKET[/prefix] to write under")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  scratch = Path(tempfile.mkdtemp(prefix="dit-jax-ckpt-time-"))
  server = None
  try:
    if args.emulator:
      server, bucket = start_emulator(scratch / "gcs")
    else:
      bucket = args.bucket.rstrip("/")
    import jax
    state = train_state()
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    rows = []
    for name, directory in (("local disk", str(scratch / "local")),
                            ("gs:// (emulator)" if args.emulator else "gs://", f"{bucket}/t")):
      saves, restores = measure(directory, state, args.repeats)
      rows.append(f"| {name} | {min(saves):.2f} | {sorted(saves)[len(saves) // 2]:.2f} | "
                  f"{min(restores):.2f} | {sorted(restores)[len(restores) // 2]:.2f} |")
    table = "\n".join([
        f"DiT-B/2 train state: {size / 2**30:.2f} GiB (float32 params, EMA, AdamW mu and nu), "
        f"{args.repeats} saves and restores each, on {os.cpu_count()} CPU cores.", "",
        "| store | save min (s) | save median (s) | restore min (s) | restore median (s) |",
        "|---|---|---|---|---|", *rows])
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Checkpoint time: local disk vs bucket\n\n{table}\n")
  finally:
    if server is not None:
      server.stop()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
