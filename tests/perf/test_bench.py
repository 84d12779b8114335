"""Profiles of the benchmarked step: kernels by kind and place, read from the optimized HLO and
a jax.profiler trace (hand-written ones with known sums, then a real traced step)."""
import gzip
import json

import jax.numpy as jnp
import pytest

from dit_jax import cli
from dit_jax.errors import InputError, MissingPackageError
from dit_jax.models.dit import dit
from dit_jax.perf import bench, hlo

# A GPU program's kernels as XLA prints them (shortened): a cuBLAS GEMM, cuDNN attention and
# its backward, an elementwise fusion, an FSDP gather and a layout copy.
GPU_HLO = """\
ENTRY %main (p: bf16[8,64,64]) -> bf16[8,64,64] {
  %custom-call.3 = (bf16[512,192]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/jvp(DiT)/DiT.blocks/blocks_3/attn/qkv/dot_general"}
  %custom-call.7 = (bf16[8,4,64,16]{3,2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(train_step)/jvp(DiT)/DiT.blocks/blocks_3/attn/dot_product_attention"}
  %custom-call.9 = (bf16[8,4,64,16]{3,2,1,0}) custom-call(%q, %k, %v, %o), custom_call_target="__cudnn$fmhaSoftmaxBackward", metadata={op_name="jit(train_step)/transpose(jvp(DiT))/DiT.blocks/blocks_3/attn/dot_product_attention"}
  %loop_add_fusion.2 = f32[8,64,64]{2,1,0} fusion(%x, %y), kind=kLoop, calls=%fused_add.2, metadata={op_name="jit(train_step)/transpose(jvp(DiT))/DiT.blocks/blocks_0/adaLN/add"}
  %all-gather-start.1 = (f32[64]{0}, f32[256]{0}) all-gather-start(%w), replica_groups={{0,1,2,3}}, dimensions={0}, metadata={op_name="jit(train_step)/jvp(DiT)/DiT.blocks/blocks_1/mlp/fc1/all_gather"}
  %copy.4 = f32[64,64]{0,1} copy(%m), metadata={op_name="jit(train_step)/add"}
  ROOT %t = bf16[8,64,64]{2,1,0} tuple(%y)
}
"""


def test_instructions_by_kind_and_place():
  table = hlo.instructions(GPU_HLO)
  assert table["custom-call.3"] == ("matmul", "jit(train_step)/jvp(DiT)/DiT.blocks/blocks_3/"
                                              "attn/qkv/dot_general")
  assert [table[n][0] for n in ("custom-call.7", "custom-call.9", "loop_add_fusion.2",
                                "all-gather-start.1", "copy.4")] == [
      "attention", "attention", "fusion", "collective", "data movement"]
  regions = {n: hlo.op_region(op) for n, (_, op) in table.items() if op}
  assert regions == {"custom-call.3": "forward DiT.blocks/attn",
                     "custom-call.7": "forward DiT.blocks/attn",
                     "custom-call.9": "backward DiT.blocks/attn",
                     "loop_add_fusion.2": "backward DiT.blocks/adaLN",
                     "all-gather-start.1": "forward DiT.blocks/mlp",
                     "copy.4": "update"}


def write_trace(path, events):
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_profile_rows_sum_the_device_timeline(tmp_path):
  """Two steps on a GPU timeline: the host's launch events (same hlo_op) are not counted,
  durations are summed per (kind, region) and divided by the steps."""
  meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
          {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "pid": 9, "name": "process_name",
           "args": {"name": "/device:CUSTOM:Megascale Trace"}}]
  kernel = lambda pid, op, us: {"ph": "X", "pid": pid, "tid": 0, "ts": 0, "dur": us,
                                "name": "k", "args": {"hlo_op": op}}
  events = meta + [kernel(7, "custom-call.3", 300.0), kernel(7, "custom-call.3", 500.0),
                   kernel(7, "custom-call.7", 200.0), kernel(7, "custom-call.7", 200.0),
                   kernel(7, "loop_add_fusion.2", 100.0), kernel(7, "unknown.1", 100.0),
                   kernel(1, "custom-call.3", 9999.0)]
  write_trace(tmp_path / "t.json.gz", events)
  rows = bench.profile_rows(str(tmp_path / "t.json.gz"), hlo.instructions(GPU_HLO), steps=2)
  by_key = {(r["kind"], r["region"]): r for r in rows}
  assert by_key[("matmul", "forward DiT.blocks/attn")]["ms"] == pytest.approx(0.4)
  assert by_key[("matmul", "forward DiT.blocks/attn")]["kernels"] == 1.0
  assert by_key[("attention", "forward DiT.blocks/attn")]["ms"] == pytest.approx(0.2)
  assert by_key[("fusion", "backward DiT.blocks/adaLN")]["ms"] == pytest.approx(0.05)
  assert by_key[("other", "")]["ms"] == pytest.approx(0.05)
  assert rows[0]["kind"] == "matmul" and sum(r["share"] for r in rows) == pytest.approx(1.0)
  assert rows[0]["share"] == pytest.approx(800 / 1400)


def test_a_traced_train_step_is_summed_by_pass(tmp_path):
  """A real data-parallel step on the CPU devices (device 0's kernels): they come from the
  forward and backward passes of the model and from the update (loss, AdamW, EMA). With
  libtpu loaded (a TPU topology made, as `aot` does; where it is installed), its profiler
  adds a /device: timeline of its own without HLO ops, which must not hide the CPU's."""
  try:
    from dit_jax.perf import aot
    aot.Target.create("v5e-4")
  except MissingPackageError:  # no libtpu here
    pass
  model = dit("DiT-S/4", dtype=jnp.float32, attention_backend="xla", num_classes=10, depth=2,
              hidden_size=64, num_heads=4)
  result = bench.bench_train_step(model, (8, 8, 4), 8, steps=1, profile_dir=str(tmp_path))
  rows = result.profile
  steps = {r["region"].split(" ")[0] for r in rows if r["kind"] != "other"}
  assert {"forward", "backward", "update"} <= steps
  assert all(r["ms"] > 0 and r["kernels"] > 0 for r in rows)
  assert sum(r["share"] for r in rows) == pytest.approx(1.0)
  assert any("DiT.blocks/attn" in r["region"] for r in rows)


def test_a_trace_for_a_bucket_is_read_here_and_uploaded_there(gcs_bucket, tmp_path,
                                                             monkeypatch):
  """`bench --profile gs://...`: the profiler writes local files only, so the trace is taken
  in a temporary folder, summed, and uploaded under the bucket folder; nothing stays local."""
  from dit_jax import paths
  monkeypatch.chdir(tmp_path)
  model = dit("DiT-S/4", dtype=jnp.float32, attention_backend="xla", num_classes=10, depth=1,
              hidden_size=32, num_heads=2)
  result = bench.bench_train_step(model, (8, 8, 4), 8, steps=1,
                                  profile_dir=f"{gcs_bucket}/trace")
  assert result.profile and sum(r["share"] for r in result.profile) == pytest.approx(1.0)
  [run] = paths.list_names(f"{gcs_bucket}/trace/plugins/profile")
  assert "perfetto_trace.json.gz" in paths.list_names(f"{gcs_bucket}/trace/plugins/profile/{run}")
  assert list(tmp_path.iterdir()) == []


# -- what `dit-jax bench` builds and prints ---------------------------------------------------

def test_mesh_fields_parse_sizes_and_rules():
  assert bench.mesh_fields("") == {}
  assert bench.mesh_fields("data=2,fsdp=4,rules=fsdp") == dict(data=2, fsdp=4, rules="fsdp")
  assert bench.mesh_fields("fsdp=-1,") == dict(fsdp=-1)  # -1: the rest of the devices
  for bad in ("fsdp", "data=x", "data=2,tensor"):
    with pytest.raises(InputError, match=f"--mesh {bad!r}: expected key=value items"):
      bench.mesh_fields(bad)


def test_bench_refuses_unknown_mesh_keys(capsys):
  with pytest.raises(SystemExit) as stop:
    cli.main(["bench", "--model", "DiT-S/8", "--image-size", "64", "--mesh", "foo=2,data=1"])
  assert stop.value.code == 2
  assert ("--mesh 'foo=2,data=1': unknown keys ['foo']; the keys are data, fsdp, tensor, "
          "dcn_data") in capsys.readouterr().err


def test_bench_model_of_preset_fields_and_of_a_config():
  name, model, shape, config = bench.bench_model()
  assert (name, shape, config) == ("DiT-XL/2", (32, 32, 4), None)
  assert model == dit("DiT-XL/2", dtype=jnp.bfloat16, attention_backend="auto",
                      scan_layers=False, remat_policy="none")
  name, model, shape, _ = bench.bench_model("S/8", dtype="float32", attention="xla", scan=True,
                                            remat="full", image_size=64, latent_downsample=1,
                                            channels=3)
  assert (name, shape) == ("DiT-S/8", (64, 64, 3))
  assert model == dit("DiT-S/8", dtype=jnp.float32, attention_backend="xla", scan_layers=True,
                      remat_policy="full")
  name, model, shape, config = bench.bench_model(config="configs/dit.py:DiT-B/4",
                                                 overrides=["model.depth=2"])
  assert (name, shape, model.depth, config.model.depth) == ("DiT-B/4", (32, 32, 4), 2, 2)
  with pytest.raises(InputError, match=r"\['--dtype', '--scan'\] set a preset's fields"):
    bench.bench_model(config="configs/dit.py:DiT-B/4", dtype="float32", scan=True)
  with pytest.raises(InputError, match="overrides need --config"):
    bench.bench_model(overrides=["model.depth=2"])


ROW = dict(model="DiT-S/8", batch=8, input=[8, 8, 4], attention="xla", scan=False,
           remat="none", dtype="float32", devices=8, device="cpu", images_per_s=123.456,
           step_ms=64.81, compile_s=3.21, train_tflops_per_s=0.0123, memory_gib=None,
           profile=[dict(kind="matmul", region="blocks/attn", ms=1.5, kernels=12, share=0.25)])


def test_format_bench_row_train_step_and_sampler():
  head = "DiT-S/8 batch 8 float32 attention=xla scan=False remat=none on 8 x cpu: "
  lines = bench.format_bench_row(ROW).splitlines()
  assert lines[0] == head + ("123.5 images/s, 64.8 ms/step, 0.0 TFLOP/s per device, step "
                             "memory n/a, compile 3.2 s")
  assert lines[1].split() == ["matmul", "blocks/attn", "1.50", "ms/step", "12", "kernels",
                              "25.0%"]
  sampled = dict(ROW, batch_s=2.5, tflops_per_s=1.25, memory_gib=1.5)
  assert bench.format_bench_row(sampled, ("ddpm", 250), 4.0) == head + (
      "ddpm 250 steps, guidance 4.0: 123.5 images/s, 2.50 s per batch, 1.2 TFLOP/s per "
      "device, compile 3.2 s")
  assert "step memory 1.50 GiB" in bench.format_bench_row(dict(ROW, memory_gib=1.5))
