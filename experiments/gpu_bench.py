"""Train-step benchmarks of DiT on one accelerator, one JSON line per setting.

    python experiments/gpu_bench.py --out experiments/results/gpu_bench.jsonl

Each line is `dit-jax bench` for one setting (model, batch, dtype, attention backend, scan,
remat); the step is the real sharded train step (AdamW + EMA) on random data on the device.
A setting that fails (out of memory, backend missing) is recorded with its error.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp

from dit_jax import bench
from dit_jax.models.dit import dit

SETTINGS = [  # (model, batch, dtype, attention, scan, remat)
    ("DiT-XL/2", 32, "float32", "xla", False, "none"),
    ("DiT-XL/2", 32, "bfloat16", "xla", False, "none"),
    ("DiT-XL/2", 32, "bfloat16", "cudnn", False, "none"),
    ("DiT-XL/2", 32, "bfloat16", "cudnn", True, "none"),
    ("DiT-XL/2", 128, "bfloat16", "cudnn", True, "none"),
    ("DiT-XL/2", 128, "bfloat16", "cudnn", True, "dots"),
    ("DiT-B/2", 128, "bfloat16", "cudnn", True, "none"),
]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run")
  args = parser.parse_args()
  rows = []
  for index, (name, batch, dtype, attention, scan, remat) in enumerate(SETTINGS):
    if args.only and index not in args.only:
      continue
    row = dict(model=name, batch=batch, dtype=dtype, attention=attention, scan=scan,
               remat=remat, device=jax.devices()[0].device_kind)
    start = time.perf_counter()
    try:
      model = dit(name, dtype=jnp.dtype(dtype), attention_backend=attention, scan_layers=scan,
                  remat_policy=remat)
      row.update(bench.bench_train_step(model, (32, 32, 4), batch, steps=args.steps,
                                        mesh_config=dict(data=1)).as_dict())
    except Exception as e:  # noqa: BLE001 -- record and go on to the next setting
      row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    row["wall_s"] = time.perf_counter() - start
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
  main()
