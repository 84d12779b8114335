"""Memory of the DiT-XL/2 train step on one H100, compiled ahead of time on a CPU host with
JAX's CUDA plugin (`dit-jax aot --topology h100`; no GPU): does global batch 256 fit one 80 GB
GPU, with which scan / remat / attention, and how much memory does each image take?

    pip install -e '.[aot]' nvidia-cudnn-cu12   # cuDNN only for the cudnn-attention rows
    python experiments/gpu_memory.py            # writes experiments/results/gpu_memory.md
    python experiments/gpu_memory.py --gpu h200 --out experiments/results/gpu_memory_h200.md

Every figure is XLA's memory analysis of the compiled GPU program (cuBLAS GEMMs: without a GPU
XLA cannot autotune Triton's); throughput needs a GPU (`experiments/gpu_bench.py`).
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_jax import aot  # noqa: E402
from dit_jax.config import load_config, validate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GIB = 2 ** 30
# (attention, scan, remat, batches)
CASES = [(attention, scan, remat, batches)
         for attention in ("cudnn", "xla")
         for scan, remat, batches in ((False, "none", (32, 64, 128, 256)),
                                      (False, "dots", (256,)), (True, "none", (256,)),
                                      (True, "full", (256, 512)))]


def compile_case(target, attention, scan, remat, batch) -> dict:
  config = load_config("configs/dit.py:DiT-XL/2")
  config.data.batch_size = batch
  config.model.update(dtype="bfloat16", attention_backend=attention, scan_layers=scan,
                      remat_policy=remat)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  row = dict(attention=attention, scan=scan, remat=remat, batch=batch)
  try:
    _, report = aot.compile_step(validate(config), target)
  except ModuleNotFoundError as error:  # no cuDNN library here
    return dict(row, error=str(error))
  m = report.memory
  return dict(row, total=m["total"], arguments=m["arguments"], temporaries=m["temporaries"],
              fits=report.fits, hbm=report.hbm_bytes, compile_s=report.compile_s)


def markdown(rows: list[dict], gpu: str) -> str:
  hbm = next(r["hbm"] for r in rows if "hbm" in r) / GIB
  lines = [
      f"# DiT-XL/2 train step on one {gpu}, compiled ahead of time (`experiments/gpu_memory.py`)",
      "",
      "XLA's memory analysis of the GPU program compiled by `dit-jax aot --topology h100` on a "
      "CPU host (no GPU): arguments + outputs + temporaries - donated aliases. 256 px images "
      "as 32x32x4 latents, bfloat16 compute, float32 parameters, AdamW moments and EMA "
      "(10.06 GiB of state), the flow-matching step of `dit-jax train`. GEMMs are cuBLAS "
      "(XLA cannot autotune Triton GEMMs without a GPU). Per image: temporaries / batch. "
      f"JAX preallocates 75% of the GPU by default: a step over {0.75 * hbm:.0f} GiB needs "
      "`XLA_PYTHON_CLIENT_MEM_FRACTION=.95`.",
      "",
      "| attention | scan | remat | batch | GiB total | temporaries GiB | MiB per image | "
      f"fits {hbm:.1f} GiB | compile s |",
      "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    head = f"| {r['attention']} | {'yes' if r['scan'] else 'no'} | {r['remat']} | {r['batch']} "
    if "error" in r:
      lines.append(head + f"| {r['error'][:60]} | | | | |")
      continue
    lines.append(head + f"| {r['total'] / GIB:.2f} | {r['temporaries'] / GIB:.2f} | "
                 f"{r['temporaries'] / r['batch'] / 2**20:.0f} | "
                 f"{'yes' if r['fits'] else '**no**'} | {r['compile_s']:.0f} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--gpu", default="h100")
  parser.add_argument("--out", default=str(RESULTS / "gpu_memory.md"))
  args = parser.parse_args()
  target = aot.Target.create(args.gpu)
  rows = []
  for attention, scan, remat, batches in CASES:
    for batch in batches:
      rows.append(compile_case(target, attention, scan, remat, batch))
      print(json.dumps(rows[-1]), flush=True)
  Path(args.out).write_text(markdown(rows, target.chip.device_name))
  Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
