"""Reading XLA's optimized HLO text: its computations, how often each runs per step (while
loops by their trip count), and its collectives with the bytes each device moves.

The text is what `compiled.as_text()` returns; on TPU it has three spellings of replica
groups, reduce-scatters fused as `all-reduce-scatter` computations, FSDP gathers turned into
windowed collective-matmul loops of collective-permutes, and cross-slice (DCN) transfers as
Megascale host sends. Pure functions of the text: tested on hand-written HLO.
"""
import collections
import math
import re

import numpy as np


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
          "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
          "c64": 8, "c128": 16}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")


def _shape_bytes(text: str) -> list[int]:
  """Bytes of every array shape in `text` (a result type, possibly a tuple)."""
  return [_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
          for dtype, dims in _SHAPE.findall(text) if dtype in _BYTES]


def replica_groups(attributes: str, num_devices: int) -> list[list[int]]:
  """The replica groups as lists of device ids, from any of XLA's three spellings:
  {{0,1},{2,3}}; the iota form [groups,size]<=[dims]T(perm); the mesh form
  mesh['a'=4,'b'=2] {'a'} (the groups vary the named axes of a row-major device grid)."""
  explicit = re.search(r"replica_groups=(\{\{[0-9,{}]*\}\})", attributes)
  if explicit:
    return [[int(i) for i in g.split(",") if i]
            for g in re.findall(r"\{([0-9,]*)\}", explicit[1])]
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?",
                   attributes)
  if iota:
    dims = [int(d) for d in iota[3].split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota[4]:
      ids = ids.transpose([int(p) for p in iota[4].split(",")])
    return ids.reshape(int(iota[1]), int(iota[2])).tolist()
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
  if mesh:
    sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh[1])}
    names = list(sizes)
    chosen = [n for n in re.findall(r"'([^']+)'", mesh[2]) if n in sizes]
    ids = np.arange(math.prod(sizes.values())).reshape([sizes[n] for n in names])
    order = [names.index(n) for n in names if n not in chosen] + [names.index(n) for n in chosen]
    return ids.transpose(order).reshape(-1, math.prod(sizes[n] for n in chosen)).tolist()
  return [list(range(num_devices))]


def _moved_bytes(kind: str, result: list[int], operand: list[int], n: int) -> float:
  """Bytes one device sends (= receives) in a ring/torus implementation of the collective."""
  if n <= 1:
    return 0.0
  share = (n - 1) / n
  if kind in ("all-gather", "all-to-all"):
    return sum(result) * share
  if kind == "reduce-scatter":
    return sum(operand or result) * share
  if kind == "all-reduce":
    return 2 * sum(result) * share
  return float(sum(result))  # collective-permute: the whole buffer moves once


def parse_computations(hlo: str) -> dict[str, list[str]]:
  computations, current = {}, None
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header and "=" not in line.split("{")[0].split("(")[0]:
      current = computations.setdefault("ENTRY" if header[1] else header[2], [])
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      current.append(line)
  return computations


def _trip_count(while_line: str, computations: dict[str, list[str]]) -> int:
  """A while loop's iterations: XLA's known_trip_count, else the bound of the `i < N`
  compare in its condition (how lax.scan and fori_loop lower); 1 if neither is found."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_line)
  if known:
    return int(known[1])
  condition = re.search(r"condition=%?([\w.\-]+)", while_line)
  lines = computations.get(condition[1], []) if condition else []
  constants = {}
  for line in lines:
    c = re.match(r"\s*%?([\w.\-]+) = [su](?:32|64)\[\]\S* constant\((\d+)\)", line)
    if c:
      constants[c[1]] = int(c[2])
  for line in lines:
    if "direction=LT" in line:
      for name in re.findall(r"%([\w.\-]+)", line.split("compare(")[-1].split(")")[0]):
        if name in constants:
          return constants[name]
  return 1


def _calls(line: str, computations: dict[str, list[str]]) -> list[tuple[str, int]]:
  """(callee, runs per call) of one instruction: a while body by its trip count, fusions,
  reductions and conditional branches once."""
  if re.search(r"\swhile\(", line):
    trips = _trip_count(line, computations)
    return [(c, trips) for c in re.findall(r"body=%?([\w.\-]+)", line)]
  called = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)
  called += [c.strip().lstrip("%") for group in
             re.findall(r"branch_computations=\{([^}]*)\}", line) for c in group.split(",")]
  return [(c, 1) for c in called]


def _multiplicities(computations: dict[str, list[str]]) -> dict[str, int]:
  """How many times each computation runs per step, summed over all its callers: the call
  graph is acyclic, so counts flow from ENTRY in topological order."""
  edges = {name: [(c, n) for line in lines for c, n in _calls(line, computations)
                  if c in computations] for name, lines in computations.items()}
  callers = collections.Counter(c for out in edges.values() for c, _ in out)
  counts = collections.Counter({"ENTRY": 1})
  ready = [name for name in computations if not callers[name]]
  while ready:
    name = ready.pop()
    for callee, runs in edges[name]:
      counts[callee] += counts[name] * runs
      callers[callee] -= 1
      if not callers[callee]:
        ready.append(callee)
  return counts


def collectives(hlo: str, num_devices: int, num_slices: int = 1) -> list[dict]:
  """Every collective of the optimized HLO by kind: how many run per step and the bytes each
  device moves per step. Across slices (DCN) XLA hands the transfer to the Megascale runtime
  as a host `send` carrying `_xla_megascale_transfer_type`; those are counted as DCN."""
  computations = parse_computations(hlo)
  runs = _multiplicities(computations)
  table = {}

  def add(kind, dcn, count, moved):
    entry = table.setdefault((kind, dcn), dict(kind=kind, dcn=dcn, count=0, bytes=0.0))
    entry["count"] += count
    entry["bytes"] += count * moved

  for name, lines in computations.items():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      op, attributes = match[3], match[4]
      megascale = re.search(r'_xla_megascale_transfer_type="(\w+)"', attributes)
      if op == "send" and megascale:
        kind = megascale[1].lower().replace("_", "-")
        payload = _shape_bytes(match[2])[:1]
        add(kind, True, runs[name], _moved_bytes(kind, payload, payload, num_slices))
        continue
      kind = op.removesuffix("-start")
      if kind not in COLLECTIVES:
        continue
      if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
        kind = "reduce-scatter"  # TPU's fused reduce-scatter: an all-reduce kept sliced
      result = _shape_bytes(match[2])
      operand = _shape_bytes(attributes.split(")")[0])
      if op.endswith("-start") and len(result) > 1:  # (operands, results, scratch) tuples
        count = max(len(operand), 1)  # operands print as names only: one, as XLA emits
        result = result[count:2 * count]
      n = 2 if kind == "collective-permute" else len(replica_groups(attributes, num_devices)[0])
      add(kind, False, runs[name], _moved_bytes(kind, result, operand, n))
  return sorted(table.values(), key=lambda e: -e["bytes"])


# Kernels by what they do, for profiles: GEMMs (cuBLAS, Triton GEMM fusions, dots), fused
# attention (cuDNN), collectives, data movement, and the other fusions (elementwise and
# reductions: norms, modulation, casts, the optimizer update).
def _kind(opcode: str, rest: str) -> str:
  if opcode == "custom-call":
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    target = target[1] if target else ""
    if "fmha" in target or "flash" in target.lower():
      return "attention"
    if any(k in target for k in ("gemm", "matmul", "cublas")):
      return "matmul"
    return "custom-call"
  if opcode == "dot" or (opcode == "fusion" and re.search(r'"kind":"__triton_gemm|kind=kOutput|'
                                                          r'"kind":"__cublas', rest)):
    return "matmul"
  if opcode == "convolution":
    return "convolution"
  if opcode.startswith(COLLECTIVES):
    return "collective"
  if opcode in ("copy", "transpose", "copy-start", "dynamic-update-slice", "dynamic-slice"):
    return "data movement"
  if opcode == "fusion":
    return "fusion"
  return opcode


def instructions(hlo: str) -> dict[str, tuple[str, str]]:
  """Every instruction's name -> (kind, op_name): its kind for profiles (see `_kind`) and the
  JAX op path of its metadata (e.g. jit(train_step)/transpose(jvp(DiT))/DiT.blocks/...)."""
  table = {}
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      name, opcode, rest = match[1], match[3], match[4]
      op_name = re.search(r'op_name="([^"]*)"', rest)
      table[name] = (_kind(opcode, rest), op_name[1] if op_name else "")
  return table


def op_region(op_name: str) -> str:
  """A coarse place in the program for an op path: the pass (forward, backward, or update:
  the loss, optimizer and EMA outside the model's differentiation) and the first two module
  names, block indices dropped, e.g. 'backward DiT.blocks/attn'."""
  step = "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else "update"
  names = [re.sub(r"_\d+$", "", p) for p in op_name.split("/")[1:-1]
           if p and "(" not in p and not p.startswith("jit")]
  names = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1].split(".")[-1]]
  return f"{step} {'/'.join(names[:2])}".strip()
