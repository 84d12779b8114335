"""Ahead-of-time compilation for Cloud TPU slices (libtpu's compile-only devices, no TPU):
the real train and sample steps of a small DiT, their memory and collectives, the HLO reader,
the slice names and the CLI's errors."""
import dataclasses
import math
import sys

import pytest

import aot_helpers
from aot_helpers import BASE, LATENTS, run_cli, state_bytes
from dit_jax import cli, engine, parallel
from dit_jax.models import create_model
from dit_jax.perf import aot, hlo, tpu
from dit_jax.training import denoiser

pytest.importorskip("libtpu", reason="the TPU runtime (pip install -e '.[tpu]') compiles these")

MESH = dict(dp=dict(data=-1, fsdp=1, tensor=1), fsdp=dict(data=1, fsdp=-1, tensor=1),
            fsdp_tp=dict(data=1, fsdp=-1, tensor=2))


def small_config(rules="fsdp", batch=32, **model):
  return aot_helpers.small_config(rules, batch, MESH[rules], **model)


@pytest.fixture(scope="module")
def v5e_4():
  return aot.Target.create("v5e-4")


@pytest.fixture(scope="module")
def v4_8():
  return aot.Target.create("v4-8")


@pytest.fixture(scope="module")
def one_chip_reports(v5e_4, v4_8):
  """The same train step on one chip of each slice (no sharding)."""
  config = small_config("dp")
  config.mesh.update(data=1)
  return {name: aot.compile_step(config, dataclasses.replace(t, devices=t.devices[:1]))[1]
          for name, t in (("v5e_4", v5e_4), ("v4_8", v4_8))}


def kinds(report) -> set[str]:
  return {c["kind"] for c in report.collectives}


@pytest.mark.parametrize("topology", ["v5e_4", "v4_8"])
@pytest.mark.parametrize("rules", ["dp", "fsdp", "fsdp_tp"])
def test_train_step_memory_and_collectives(request, one_chip_reports, topology, rules):
  target = request.getfixturevalue(topology)
  config = small_config(rules)
  compiled, report = aot.compile_step(config, target)
  assert report.chips == 4 and report.compiler_topology in ("v5e:2x2", "v4:2x2x1")
  # Memory per chip: at least the sharded state, at most the same step on one chip.
  assert report.memory["total"] >= state_bytes(config, target)
  single = one_chip_reports[topology]
  assert single.chips == 1 and not single.collectives
  assert report.memory["total"] <= single.memory["total"]
  assert report.analytic_flops == pytest.approx(single.analytic_flops / 4)
  found = kinds(report)
  if rules == "dp":  # replicated parameters: only gradients (and metrics) are all-reduced
    assert found == {"all-reduce"}
  else:  # FSDP: parameters gathered for use, gradients reduce-scattered to their shards
    assert {"all-gather", "reduce-scatter"} <= found
  if rules == "fsdp_tp":  # tensor parallelism all-reduces activations inside each block
    tp = [c for c in report.collectives if c["kind"] == "all-reduce"]
    assert tp and sum(c["bytes"] for c in tp) > 0
  assert report.fits and report.attention == "splash"
  assert "tpu_custom_call" in compiled.as_text()  # the Pallas kernel compiled, not interpreted
  assert report.roofline["estimate"] == max(report.roofline[k] for k in
                                            ("compute", "hbm", "ici", "dcn"))


@pytest.mark.parametrize("topology", ["v5e_4", "v4_8"])
@pytest.mark.parametrize("rules", ["dp", "fsdp", "fsdp_tp"])
def test_sample_step(request, topology, rules):
  target = request.getfixturevalue(topology)
  config = small_config(rules)
  _, report = aot.compile_step(config, target, step="sample", sample_batch=8)
  assert report.step == "sample" and report.batch == 8 and report.fits
  # The EMA parameters are an argument: at least their sharded bytes on every chip.
  model = create_model(config.model)
  plan = parallel.ShardingPlan.create(config.mesh, devices=target.devices)
  params = engine.abstract_params(denoiser.denoiser_task(model, None, LATENTS), plan)
  assert report.memory["arguments"] >= aot._per_chip_bytes(params)
  # heun: 2 evaluations a step, guidance doubles them: 4 steps -> 16 forwards of 8 samples.
  macs = sum(model.forward_flops(16, 16, 4).values())
  assert report.analytic_flops == pytest.approx(2 * macs * 8 * 16 / 4)
  if rules != "dp":  # sharded parameters are gathered to apply the model
    assert "all-gather" in kinds(report) or "collective-permute" in kinds(report)


def test_scan_needs_no_more_temporaries_than_unrolled(v5e_4):
  reports = {scan: aot.compile_step(small_config("fsdp", depth=4, scan_layers=scan),
                                    v5e_4)[1] for scan in (False, True)}
  assert reports[True].memory["temporaries"] <= reports[False].memory["temporaries"]
  # Scanned layers run in a loop: its collectives count once per layer, as unrolled ones do.
  gathers = {s: sum(c["count"] for c in r.collectives if c["kind"] == "all-gather")
             for s, r in reports.items()}
  assert gathers[True] >= 4


def test_two_slices_split_the_batch_over_dcn():
  target = aot.Target.create("v5e-4", num_slices=2)
  config = small_config("fsdp")
  config.mesh.update(data=1, fsdp=4, dcn_data=2)
  _, report = aot.compile_step(config, target)
  assert report.chips == 8 and report.settings["mesh"]["data"] == 2
  dcn = [c for c in report.collectives if c["dcn"]]
  # Parameters are sharded inside a slice; gradients are all-reduced across the slices.
  assert {c["kind"] for c in dcn} == {"all-reduce"}
  assert not [c for c in report.collectives if c["kind"] == "all-gather" and c["dcn"]]
  assert report.roofline["dcn"] > 0


# -- the HLO reader ---------------------------------------------------------------------------

HLO = """\
HloModule m

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]) parameter(0)
  %ag = bf16[4,64]{1,0} all-gather(bf16[1,64]{1,0} %x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %y)
}

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = u32[] constant(7)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%all-reduce-scatter.1 (a: f32[1024]) -> f32[256] {
  %ar = f32[1024]{0} all-reduce(f32[1024]{0} %a), replica_groups=mesh['x'=2,'y'=4] {'y'}, to_apply=%add
}

ENTRY %main (a: f32[1024]) -> f32[256] {
  %w = (s32[], f32[8,16]) while(%init), condition=%cond, body=%body
  %rs = f32[256] fusion(f32[1024] %a), kind=kOutput, calls=%all-reduce-scatter.1
  %ar2 = f32[16]{0} all-reduce(f32[16]{0} %g), replica_groups={{0,4},{1,5},{2,6},{3,7}}, to_apply=%add
  %cp = f32[32]{0} collective-permute(f32[32]{0} %h), source_target_pairs={{0,1},{1,2}}
  %cps = (f32[32]{0}, f32[32]{0}, u32[], u32[]) collective-permute-start(%h2), source_target_pairs={{0,1}}
  %send = (bf16[2,8,128]{2,1,0}, u32[], token[]) send(%b, %tok), channel_id=24, is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
}
"""


def test_hlo_collectives_by_kind_with_loop_trip_counts():
  found = {(c["kind"], c["dcn"]): c for c in hlo.collectives(HLO, 8, num_slices=2)}
  # The all-gather runs 7 times (the loop bound); each device receives 3/4 of 4*64 bf16.
  gather = found["all-gather", False]
  assert gather["count"] == 7 and gather["bytes"] == pytest.approx(7 * 4 * 64 * 2 * 3 / 4)
  # TPU's fused reduce-scatter; the mesh form groups the 4 devices along 'y'.
  assert found["reduce-scatter", False]["bytes"] == pytest.approx(1024 * 4 * 3 / 4)
  # Groups of 2: an all-reduce moves 2 * (1/2) of its 16 floats.
  assert found["all-reduce", False]["bytes"] == pytest.approx(64)
  # Async form: (operand, result, scratch) tuple; the result buffer is what moves.
  permute = found["collective-permute", False]
  assert permute["count"] == 2 and permute["bytes"] == 2 * 128
  # Across the two slices: the Megascale send of 2*8*128 bf16, all-reduced (2 * 1/2 of it).
  assert found["all-reduce", True]["bytes"] == pytest.approx(2 * 8 * 128 * 2)


SHARED = """\
%gather (x: bf16[1,64]) -> bf16[4,64] {
  ROOT %ag = bf16[4,64]{1,0} all-gather(bf16[1,64]{1,0} %x), replica_groups=[2,4]<=[8], dimensions={0}
}

%outer (x: bf16[1,64]) -> bf16[4,64] {
  ROOT %c = bf16[4,64] call(%x), to_apply=%gather
}

%body (p: (u32[], bf16[1,64])) -> (u32[], bf16[1,64]) {
  %f = bf16[4,64] fusion(%x), kind=kLoop, calls=%outer
}

%cond (p: (u32[], bf16[1,64])) -> pred[] {
  %n = u32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: bf16[1,64]) -> bf16[4,64] {
  %w = (u32[], bf16[1,64]) while(%init), condition=%cond, body=%body
  %f2 = bf16[4,64] fusion(%a), kind=kLoop, calls=%outer
}
"""


def test_a_computation_called_from_two_places_counts_both():
  # %outer (and the %gather it calls) runs once from ENTRY and five times from the loop
  # body: both callers count, whichever is read first.
  (gather,) = hlo.collectives(SHARED, 8)
  assert gather["count"] == 6


def test_replica_group_spellings():
  assert hlo.replica_groups("replica_groups={{0,2},{1,3}}", 4) == [[0, 2], [1, 3]]
  assert hlo.replica_groups("replica_groups=[2,2]<=[2,2]T(1,0)", 4) == [[0, 2], [1, 3]]
  assert hlo.replica_groups("replica_groups=mesh['a'=2,'b'=2] {'a'}", 4) == [[0, 2], [1, 3]]
  assert hlo.replica_groups("channel_id=3", 4) == [[0, 1, 2, 3]]


# -- slice names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, chips, shape", [
    ("v4-8", 4, (2, 2, 1)), ("v4-32", 16, (2, 2, 4)), ("v5p-64", 32, (2, 4, 4)),
    ("v5p-128", 64, (4, 4, 4)), ("v5e-16", 16, (4, 4)), ("v5litepod-256", 256, (16, 16)),
    ("v6e-64", 64, (8, 8)), ("v5e-1", 1, (1, 1))])
def test_slice_names(name, chips, shape):
  s = tpu.parse_slice(name)
  assert (s.chips, s.shape) == (chips, shape)
  assert math.prod(s.shape) == chips


@pytest.mark.parametrize("name", ["v5e-12", "v3-8", "tpu", "v4-2"])
def test_unknown_slice_lists_valid_ones(name):
  with pytest.raises(ValueError, match=r"v5e-1 \.\.\. v5e-256"):
    tpu.parse_slice(name)


def test_plan_step_adds_the_xla_attention_baseline(v5e_4):
  """aot.plan_step, the call of `dit-jax aot`: the baseline is the total of the same step
  compiled with XLA attention, and a topology that is neither a slice nor a host is refused."""
  from dit_jax.config import apply_overrides, load_config, validate
  from dit_jax.errors import InputError
  overrides = [a[len("--config."):] for a in BASE if a.startswith("--config.")]
  overrides += ["data.batch_size=8", "data.image_size=256"]
  report = aot.plan_step("configs/dit.py:DiT-S/8", overrides, "v5e-4", attention_baseline=True)
  xla = validate(apply_overrides(load_config("configs/dit.py:DiT-S/8"),
                                 overrides + ["model.attention_backend=xla"]))
  assert report.attention == "splash" and report.fits and not report.levers
  assert report.xla_attention_total == aot.compile_step(xla, v5e_4)[1].memory["total"]
  with pytest.raises(InputError, match="--topology 'v5e-12'"):
    aot.plan_step("configs/dit.py:DiT-S/8", overrides, "v5e-12")


# -- the command ------------------------------------------------------------------------------

def test_cli_without_libtpu_says_how_to_install_it(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` now fails
  status, out = run_cli(BASE + ["--topology", "v5e-4"], capsys)
  assert status == 2 and "pip install -e '.[tpu]'" in out.err and "Traceback" not in out.err


def test_cli_unknown_topology(capsys):
  status, out = run_cli(BASE + ["--topology", "v5e-12"], capsys)
  assert status == 2 and "--topology 'v5e-12'" in out.err and "v5e-1 ... v5e-256" in out.err


def test_cli_batch_the_mesh_cannot_split(capsys):
  status, out = run_cli(BASE + ["--topology", "v5e-4", "--config.data.batch_size=6"], capsys)
  assert status == 2 and "data.batch_size=6 must be divisible by" in out.err


def test_cli_step_that_does_not_fit(capsys):
  status, out = run_cli(BASE + ["--topology", "v5e-1", "--config.data.batch_size=65536",
                                "--config.data.image_size=512"], capsys)
  assert status == 1
  assert "GiB per chip on v5e-1" in out.err and "data.batch_size=" in out.err
  assert "model.remat_policy='full'" in out.err
  assert "does NOT fit" in out.out  # the report is printed too


def test_cli_report_as_json(capsys):
  import json
  cli.main(BASE + ["--topology", "v5e-4", "--config.data.batch_size=8", "--format", "json",
                   "--attention-baseline", "--config.data.image_size=256"])
  report = json.loads(capsys.readouterr().out)
  assert report["fits"] and report["chips"] == 4 and report["step"] == "train"
  assert report["memory"]["total"] == (report["memory"]["arguments"] + report["memory"]["outputs"]
                                       + report["memory"]["temporaries"]
                                       - report["memory"]["aliased"])
  # 32x32 latents in patches of 8: 16 tokens; splash pads them to its 128-token tile, so at
  # this size XLA attention is no larger (the saving grows with T^2 at real sizes).
  assert report["attention"] == "splash" and report["xla_attention_total"] > 0
