"""dit_jax next to the reference PyTorch DiT on the same GPU, in one run: train step and
sampling of the same model at the same batch, one table with the ratios.

    python experiments/gpu_bench.py --reference /path/to/facebookresearch/DiT --out-dir OUT
    python experiments/gpu_bench.py --reference DIR --parts sample   # a part at a time
    python experiments/gpu_bench.py --reference DIR --smoke          # the harness on CPU, tiny

On a lent GPU (its image has torch, timm and JAX but not ml-collections), from the repo root:
once here, `echo /.whl/ >> .git/info/exclude; echo /.ref-dit/ >> .git/info/exclude`, the
wheel (`pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
ml-collections`) and the reference (`git --git-dir=<DiT mirror> archive HEAD models.py diffusion
| tar -x -C .ref-dit`). Then two device calls back to back (the machine stays warm 30 s),
each carrying `.whl` and `.ref-dit`, each well inside the 10-minute limit:
`pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site
python experiments/gpu_bench.py --reference .ref-dit --out-dir $OUT --parts train`, then the
same with `--parts sample,others`; then here `python experiments/gpu_bench.py --table-from
FIRST.jsonl SECOND.jsonl --out-dir experiments/results` writes the one table of both.

Compile and warm-up seconds are reported next to every row: `torch.compile` and XLA compile
times count against the 10 minutes.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, BATCH, SAMPLES, CFG = "DiT-XL/2", 64, 32, 4.0
# part -> rows: (side, setting); a setting is a dict the side's runner reads.
PLAN = {
    "train": [
        ("reference", dict(step="train", model=MODEL, batch=BATCH, mode="fp32")),
        ("reference", dict(step="train", model=MODEL, batch=BATCH, mode="bf16")),
        ("reference", dict(step="train", model=MODEL, batch=BATCH, mode="bf16+compile")),
        ("ours", dict(step="train", model=MODEL, batch=BATCH, dtype="bfloat16",
                      attention="cudnn", scan=False, remat="none", trace=True)),
        ("ours", dict(step="train", model=MODEL, batch=BATCH, dtype="bfloat16",
                      attention="cudnn", scan=True, remat="none")),
        ("ours", dict(step="train", model=MODEL, batch=256, dtype="bfloat16",
                      attention="cudnn", scan=False, remat="none")),
        ("ours", dict(step="train", model=MODEL, batch=256, dtype="bfloat16",
                      attention="cudnn", scan=True, remat="dots")),
    ],
    "sample": [
        ("reference", dict(step="sample", model=MODEL, batch=SAMPLES, method="ddpm",
                           steps=250, mode="bf16")),
        ("reference", dict(step="sample", model=MODEL, batch=SAMPLES, method="ddpm",
                           steps=250, mode="bf16+compile")),
        ("reference", dict(step="sample", model=MODEL, batch=SAMPLES, method="euler",
                           steps=50, mode="bf16+compile")),
        ("ours", dict(step="sample", model=MODEL, batch=SAMPLES, method="ddpm", steps=250,
                      dtype="bfloat16", attention="cudnn", scan=False, remat="none")),
        ("ours", dict(step="sample", model=MODEL, batch=SAMPLES, method="euler", steps=50,
                      dtype="bfloat16", attention="cudnn", scan=False, remat="none")),
    ],
    "others": [  # no regression elsewhere: each family's own row
        ("ours", dict(step="train", model="DiT-B/2", batch=256, dtype="bfloat16",
                      attention="cudnn", scan=False, remat="none")),
        ("ours", dict(step="train", model="DiT-S/2", batch=256, dtype="bfloat16",
                      attention="cudnn", scan=False, remat="none")),
        ("ours", dict(step="train", config="configs/mmdit.py:mmdit_double", batch=256,
                      dtype="bfloat16")),
        ("ours", dict(step="train", config="configs/unet.py", batch=256, dtype="bfloat16")),
    ],
}
SMOKE = dict(model="DiT-S/8", batch=2, samples=2, steps=3, attention="xla")


def smoke(setting: dict) -> dict:
  """The same row at CPU size: DiT-S/8 on 16x16 latents, batch 2, 3 sampling steps."""
  s = dict(setting, batch=SMOKE["batch"] if setting["step"] == "train" else SMOKE["samples"])
  if "model" in s:
    s["model"] = SMOKE["model"]
  if "attention" in s:
    s["attention"] = SMOKE["attention"]
  if "steps" in s:
    s["steps"] = SMOKE["steps"]
  s["image"] = 16
  return s


# -- the reference (torch), in its own process -------------------------------------------------

def timed(fn, sync, repeats: int, warmups: int):
  """(warm-up seconds, seconds per call, last result) of `fn`, synchronising the device."""
  start = time.perf_counter()
  for _ in range(warmups):
    fn()
  sync()
  warm_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    result = fn()
  sync()
  return warm_s, (time.perf_counter() - start) / repeats, result


def run_reference(setting: dict, reference: str, repeats: int) -> dict:
  import torch
  sys.path.insert(0, reference)
  from diffusion import create_diffusion
  from models import DiT_models
  device = "cuda" if torch.cuda.is_available() else "cpu"
  device_name = lambda: torch.cuda.get_device_name() if device == "cuda" else "cpu"
  side = setting.get("image", 32)
  model = DiT_models[setting["model"]](input_size=side, num_classes=1000).to(device)
  bf16 = setting["mode"] != "fp32"
  compiled = setting["mode"].endswith("+compile")
  batch = setting["batch"]

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  def autocast():
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)

  torch.manual_seed(0)
  if setting["step"] == "train":
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 4, side, side, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
      t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
      with autocast():
        loss = diffusion.training_losses(forward, x, t, dict(y=y))["loss"].mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      with torch.no_grad():
        torch._foreach_mul_(ema, 0.9999)
        torch._foreach_add_(ema, params, alpha=1 - 0.9999)
      return loss

    warm_s, seconds, loss = timed(step, sync, repeats, warmups=2)
    if not torch.isfinite(loss):
      raise FloatingPointError("non-finite reference loss")
    return dict(images_per_s=batch / seconds, step_ms=1000 * seconds, warmup_s=warm_s,
                device=device_name())

  model.eval()
  if compiled:
    model.forward = torch.compile(model.forward)
  y = torch.cat([torch.randint(0, 1000, (batch,)), torch.full((batch,), 1000)]).to(device)

  @torch.no_grad()
  def sample():
    z = torch.randn(batch, 4, side, side, device=device)
    z = torch.cat([z, z])
    with autocast():
      if setting["method"] == "ddpm":
        diffusion = create_diffusion(str(setting["steps"]))
        return diffusion.p_sample_loop(model.forward_with_cfg, z.shape, z, clip_denoised=False,
                                       model_kwargs=dict(y=y, cfg_scale=CFG), progress=False,
                                       device=device)
      ts = torch.linspace(0, 1, setting["steps"] + 1, device=device)
      for t, t_next in zip(ts[:-1], ts[1:]):  # Euler over the same network evaluations
        out = model.forward_with_cfg(z, (t * 999).expand(len(z)), y, CFG)
        z = z + (t_next - t) * out[:, :4]
      return z

  warm_s, seconds, out = timed(sample, sync, max(1, repeats // 5), warmups=1)
  if not torch.isfinite(out).all():
    raise FloatingPointError("non-finite reference samples")
  return dict(images_per_s=batch / seconds, batch_s=seconds, warmup_s=warm_s,
              device=device_name())


# -- ours (JAX), in its own process -------------------------------------------------------------

def run_ours(setting: dict, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp

  from dit_jax.config import load_config, model_input_shape
  from dit_jax.models import create_model
  from dit_jax.models.dit import dit
  from dit_jax.perf import bench
  config = None
  if "config" in setting:
    config = load_config(str(ROOT / setting["config"]))
    config.model.dtype = setting["dtype"]
    model, image_shape = create_model(config.model), model_input_shape(config.data)
  else:
    model = dit(setting["model"], dtype=jnp.dtype(setting["dtype"]),
                attention_backend=setting["attention"], scan_layers=setting["scan"],
                remat_policy=setting["remat"])
    side = setting.get("image", 32)
    image_shape = (side, side, 4)
  if setting["step"] == "train":
    # The trace itself (tens of MB) stays out of the results folder; its summary goes in.
    profile_dir = "/tmp/gpu_bench_profile" if setting.get("trace") else None
    result = bench.bench_train_step(model, image_shape, setting["batch"], steps=repeats,
                                    config=config, profile_dir=profile_dir)
  else:
    sample_config = dict(method=setting["method"], steps=setting["steps"], cfg_scale=CFG,
                         shift=1.0, eta=0.0)
    result = bench.bench_sample(model, image_shape, setting["batch"], sample_config,
                                repeats=max(1, repeats // 5))
  return dict(result.as_dict(), device=jax.devices()[0].device_kind)


def worker(args):
  """One side's rows, each a JSON line on stdout (an error is recorded, not raised)."""
  for setting in json.loads(args.worker):
    start = time.perf_counter()
    try:
      if args.side == "reference":
        result = run_reference(setting, args.reference, args.repeats)
      else:
        result = run_ours(setting, args.repeats)
    except Exception as e:  # noqa: BLE001 -- out of memory, a missing backend: go on
      result = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
    print(json.dumps(dict(side=args.side, **setting, **result,
                          wall_s=time.perf_counter() - start)), flush=True)


# -- the table ----------------------------------------------------------------------------------

def label(row: dict) -> str:
  if row["side"] == "reference":
    return f"reference PyTorch DiT, {row['mode']}"
  if "config" in row:
    return f"dit_jax {row['config']}, {row['dtype']}"
  return (f"dit_jax, {row['dtype']}, {row['attention']}, "
          f"{'scanned' if row['scan'] else 'unrolled'}, remat {row['remat']}")


def table(rows: list[dict]) -> str:
  devices = sorted({r["device"] for r in rows if "device" in r})
  lines = ["# dit_jax and the reference PyTorch DiT side by side (`experiments/gpu_bench.py`)",
           "", f"Device: {', '.join(devices) or 'none recorded'}. Ratios are to the reference's "
           "best row of the same kind.", ""]
  for step, unit in (("train", "step ms"), ("sample", "s per batch")):
    group = [r for r in rows if r["step"] == step]
    if not group:
      continue
    best = {}
    for r in group:
      key = (r.get("model", r.get("config")), r.get("method"), r.get("steps"))
      if r["side"] == "reference" and "images_per_s" in r:
        best[key] = max(best.get(key, 0.0), r["images_per_s"])
    lines += [f"## {'Train step' if step == 'train' else 'Sampling, guidance ' + str(CFG)}", "",
              f"| model | sampler | batch | implementation | images/s | {unit} | TFLOP/s | "
              "memory GiB | compile / warm-up s | x reference |", "|---" * 10 + "|"]
    for r in group:
      model = r.get("model", r.get("config"))
      sampler = f"{r['method']} {r['steps']}" if step == "sample" else ""
      head = f"| {model} | {sampler} | {r['batch']} | {label(r)} "
      if "error" in r:
        lines.append(head + f"| {r['error'][:80]} | | | | | |")
        continue
      ref = best.get((model, r.get("method"), r.get("steps")))
      ratio = f"{r['images_per_s'] / ref:.2f}" if ref else ""
      time_s = f"{r['step_ms']:.1f}" if step == "train" else f"{r['batch_s']:.2f}"
      tflops = r.get("train_tflops_per_s", r.get("tflops_per_s"))
      memory = r.get("memory_gib")
      lines.append(head + f"| {r['images_per_s']:.1f} | {time_s} | "
                   f"{'' if tflops is None else f'{tflops:.0f}'} | "
                   f"{'' if memory is None else f'{memory:.1f}'} | "
                   f"{r.get('compile_s', r.get('warmup_s', 0)):.0f} | {ratio} |")
    lines.append("")
  for r in rows:
    if r.get("profile"):
      lines += profile_table(r)
  return "\n".join(lines)


def profile_table(row: dict, top: int = 20) -> list[str]:
  """Where one train step's kernel time goes (bench.profile_rows), by kind and by place."""
  rows = row["profile"]
  total = sum(p["ms"] for p in rows)
  by_kind = {}
  for p in rows:
    by_kind[p["kind"]] = by_kind.get(p["kind"], 0.0) + p["ms"]
  lines = [f"## Where a train step's time goes: {label(row)}, batch {row['batch']}", "",
           f"Kernel time summed over the device timeline, per step: {total:.1f} ms "
           f"(the step took {row['step_ms']:.1f} ms). By kind: " + ", ".join(
               f"{k} {ms:.1f} ms ({ms / total:.0%})" for k, ms in
               sorted(by_kind.items(), key=lambda kv: -kv[1])) + ".", "",
           "| kind | place | ms per step | kernels per step | share |", "|---|---|---|---|---|"]
  lines += [f"| {p['kind']} | {p['region']} | {p['ms']:.2f} | {p['kernels']:.0f} | "
            f"{p['share']:.1%} |" for p in rows[:top]]
  return lines + [""]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reference", help="a checkout of facebookresearch/DiT (no reference "
                      "rows without it)")
  parser.add_argument("--out-dir", default=str(ROOT / "experiments" / "results"))
  parser.add_argument("--parts", default="train,sample,others")
  parser.add_argument("--repeats", type=int, default=10, help="timed train steps (sampling: "
                      "a fifth as many batches, at least one)")
  parser.add_argument("--smoke", action="store_true", help="every row at CPU size")
  parser.add_argument("--table-from", nargs="+", metavar="JSONL", help="only write the table "
                      "of these runs' rows (e.g. two device calls' gpu_bench.jsonl)")
  parser.add_argument("--side", help=argparse.SUPPRESS)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  out = Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if args.table_from:
    rows = [json.loads(line) for path in args.table_from
            for line in Path(path).read_text().splitlines() if line.startswith("{")]
    (out / "gpu_bench.md").write_text(table(rows))
    return print(table(rows))
  jsonl = out / "gpu_bench.jsonl"
  for part in args.parts.split(","):
    if part not in PLAN:
      parser.error(f"--parts: {part!r} is not one of {tuple(PLAN)}")
    for side in ("reference", "ours"):
      settings = [smoke(s) if args.smoke else s for who, s in PLAN[part] if who == side]
      if not settings or (side == "reference" and not args.reference):
        continue
      command = [sys.executable, __file__, "--side", side, "--worker", json.dumps(settings),
                 "--repeats", str(args.repeats)] + (["--reference", args.reference]
                                                    if args.reference else [])
      # JAX takes 75% of the GPU by default; the batch-256 rows need more of it.
      env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.95", PYTHONPATH=os.pathsep.join(
          [str(ROOT), os.environ.get("PYTHONPATH", "")]))
      lines = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE,
                             text=True).stdout.splitlines()
      with jsonl.open("a") as f:
        for line in lines:
          if line.startswith("{"):
            print(line, flush=True)
            f.write(line + "\n")
  rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
  (out / "gpu_bench.md").write_text(table(rows))
  print(table(rows))


if __name__ == "__main__":
  main()
