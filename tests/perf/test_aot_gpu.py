"""Ahead-of-time compilation for NVIDIA GPUs without a GPU (JAX's CUDA plugin handed the GPU's
description): the real train step of a small DiT, its memory against a count from the
shardings, its collectives, and the GPU names and errors."""
import math

import pytest

import aot_helpers
from aot_helpers import BASE, LATENTS, run_cli, state_bytes
from dit_jax import cli, parallel
from dit_jax.perf import aot, gpu

pytest.importorskip("jax_plugins.xla_cuda12",
                    reason="JAX's CUDA plugin (pip install -e '.[aot]') compiles these")


def small_config(rules="dp", batch=8, **mesh):
  return aot_helpers.small_config(rules, batch, mesh, attention_backend="xla")


def per_device_bytes(config, target, batch: int) -> int:
  """Bytes of the train state and batch on one device, from shapes and PartitionSpecs."""
  sizes = parallel.ShardingPlan.create(config.mesh, devices=target.devices).mesh.shape
  per_device = batch // (sizes["data"] * sizes["fsdp"])
  images = per_device * math.prod(LATENTS) * 4  # float32 latents
  labels = per_device * 4                       # int32
  return state_bytes(config, target) + images + labels


@pytest.fixture(scope="module")
def h100():
  return aot.Target.create("h100")


@pytest.fixture(scope="module")
def four_h100():
  return aot.Target.create("4xh100")


def test_one_gpu_train_step(h100):
  reports = {batch: aot.compile_step(small_config(batch=batch), h100)[1] for batch in (8, 32)}
  small, large = reports[8], reports[32]
  assert small.compiler_topology == "1x1x1" and small.chips == 1 and not small.collectives
  assert small.hbm_bytes == 84_942_979_072 and small.fits
  # XLA's own arguments are exactly the state and batch counted from their shapes; the
  # donated state comes back aliased: only the step's few metrics are new outputs.
  assert small.memory["arguments"] == per_device_bytes(small_config(batch=8), h100, 8)
  assert small.memory["aliased"] > 0
  assert 0 < small.memory["outputs"] - small.memory["aliased"] < 4096
  # Activations grow with the batch; the state does not.
  assert large.memory["temporaries"] > small.memory["temporaries"]
  assert large.memory["outputs"] == small.memory["outputs"]
  assert small.analytic_flops > 0 and small.roofline["compute"] > 0
  # XLA's GPU compiler gives no cost analysis without a GPU: said, not printed as zeros.
  assert small.xla_flops == 0 and "XLA n/a (no cost analysis)" in aot.format_table(small)


def test_four_gpus_data_parallel_and_fsdp(four_h100):
  dp = aot.compile_step(small_config("dp", 8, data=4, fsdp=1), four_h100)[1]
  fsdp = aot.compile_step(small_config("fsdp", 8, data=1, fsdp=4), four_h100)[1]
  for report, config in ((dp, small_config("dp", 8, data=4, fsdp=1)),
                         (fsdp, small_config("fsdp", 8, data=1, fsdp=4))):
    assert report.chips == 4 and report.compiler_topology == "1x1x4"
    assert report.memory["arguments"] == per_device_bytes(config, four_h100, 8)
  # Replicated state is all-reduced; sharded state is gathered for the forward pass and its
  # gradients reduce-scattered (XLA may fuse those into all-reduces on small tensors).
  dp_kinds = {c["kind"] for c in dp.collectives}
  fsdp_kinds = {c["kind"] for c in fsdp.collectives}
  assert dp_kinds == {"all-reduce"}
  assert "all-gather" in fsdp_kinds and {"reduce-scatter", "all-reduce"} & fsdp_kinds
  assert fsdp.memory["outputs"] < dp.memory["outputs"]  # the state, split four ways
  assert not any(c["dcn"] for c in dp.collectives + fsdp.collectives)


@pytest.mark.parametrize("name, kind, gpus", [("h100", "h100", 1), ("8xH200", "h200", 8),
                                              ("2xh100", "h100", 2)])
def test_gpu_host_names(name, kind, gpus):
  host = gpu.parse_host(name)
  assert (host.kind, host.gpus, host.topology_name) == (kind, gpus, f"1x1x{gpus}")
  with pytest.raises(ValueError, match="not a GPU host"):
    gpu.parse_host("v5e-16")


@pytest.mark.parametrize("name", ["3xh100", "16xh100", "a100", "h300"])
def test_unknown_gpu_host_lists_valid_ones(name):
  with pytest.raises(ValueError, match=r"N in \(1, 2, 4, 8\).*\('h100', 'h200'\)"):
    gpu.parse_host(name)
  # A target that is neither: the error names both kinds of valid names.
  with pytest.raises(ValueError, match=r"(?s)v5e-1 \.\.\. v5e-256.*\('h100', 'h200'\)"):
    aot.Target.create(name)


def test_target_config_carries_the_gpus_figures():
  text = gpu.target_config(gpu.GPUS["h200"])
  assert "device_memory_size: 150754820096" in text
  assert 'device_description_str: "NVIDIA H200"' in text
  assert "memory_bandwidth: 4800000000000" in text and "major: 9" in text


# -- the command ------------------------------------------------------------------------------

def test_cli_gpu_hosts_are_one_host(capsys):
  status, out = run_cli(BASE + ["--topology", "8xh100", "--num-slices", "2"], capsys)
  assert status == 2 and "--num-slices=2" in out.err and "8xh100" in out.err


def test_cli_cudnn_attention_without_cudnn_says_how(capsys):
  try:
    import nvidia.cudnn  # noqa: F401
    pytest.skip("cuDNN is installed here")
  except ImportError:
    pass
  status, out = run_cli(BASE + ["--topology", "h100", "--config.model.attention_backend=cudnn"],
                        capsys)
  assert status == 2 and "pip install nvidia-cudnn-cu12" in out.err
  assert "attention_backend=xla" in out.err and "Traceback" not in out.err


def test_cli_report_as_json(capsys):
  import json
  cli.main(BASE + ["--topology", "2xh200", "--config.data.batch_size=8", "--format", "json",
                   "--config.model.attention_backend=xla"])
  report = json.loads(capsys.readouterr().out)
  assert report["fits"] and report["chips"] == 2 and report["compiler_topology"] == "1x1x2"
  assert report["hbm_bytes"] == 143_771 * 2 ** 20 and report["attention"] == "xla"


def test_cli_sample_batch_names_the_flag(capsys):
  status, out = run_cli(BASE + ["--topology", "2xh100", "--step", "sample", "--batch-size", "3"],
                        capsys)
  assert status == 2 and "--batch-size=3 must be divisible by" in out.err
