"""Import layering of dit_jax, read from the source with `ast` (function-level imports
included): a lower layer never imports a higher one, and no module imports itself back."""
import ast
from pathlib import Path

import pytest

import dit_jax

ROOT = Path(dit_jax.__file__).parent
# The packages from the bottom up; each may import only those before it (and itself).
# nn < models < flow/data/convert/parallel < config < engine < sampling < eval < training <
# perf < studies < cli: the tree is the architecture diagram.
ABOVE_MODELS = ("dit_jax.engine", "dit_jax.sampling", "dit_jax.eval", "dit_jax.training",
                "dit_jax.perf", "dit_jax.studies", "dit_jax.cli", "dit_jax.cli_flags")
# layer prefix -> prefixes it must not import
FORBIDDEN = {
    "dit_jax.errors": ("dit_jax.",),
    "dit_jax.paths": ("dit_jax.state_files", "dit_jax.nn", "dit_jax.models", "dit_jax.flow",
                      "dit_jax.data", "dit_jax.convert", "dit_jax.parallel", "dit_jax.config",
                      *ABOVE_MODELS),
    "dit_jax.chips": ("dit_jax.",),  # the accelerators' figures: perf and the engine's MFU
    "dit_jax.state_files": ("dit_jax.nn", "dit_jax.models", "dit_jax.flow", "dit_jax.data",
                            "dit_jax.convert", "dit_jax.parallel", "dit_jax.config",
                            *ABOVE_MODELS),
    "dit_jax.nn": ("dit_jax.models", "dit_jax.flow", "dit_jax.data", "dit_jax.convert",
                   *ABOVE_MODELS),
    "dit_jax.models": ("dit_jax.flow", "dit_jax.data", "dit_jax.convert", *ABOVE_MODELS),
    "dit_jax.flow": ("dit_jax.models", "dit_jax.data", "dit_jax.convert", *ABOVE_MODELS),
    "dit_jax.data": ("dit_jax.flow", "dit_jax.convert", *ABOVE_MODELS),
    "dit_jax.convert": ("dit_jax.data", *ABOVE_MODELS),
    "dit_jax.parallel": ("dit_jax.models", "dit_jax.flow", "dit_jax.data", *ABOVE_MODELS),
    "dit_jax.config": ABOVE_MODELS,
    # the engine knows no model family, data set, sampler or evaluator: tasks and hooks come in
    "dit_jax.engine": ("dit_jax.models", "dit_jax.flow", "dit_jax.data", "dit_jax.convert",
                       *ABOVE_MODELS[1:]),
    "dit_jax.sampling": ABOVE_MODELS[2:],  # reads checkpoints with the engine
    "dit_jax.eval": ABOVE_MODELS[3:],
    "dit_jax.training": ABOVE_MODELS[4:],
    "dit_jax.perf": ABOVE_MODELS[5:],
    "dit_jax.studies": ABOVE_MODELS[6:],
}


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in ROOT.rglob("*.py")}


def imports(path: Path) -> set[str]:
  """Every dit_jax module `path` imports, at any depth of the file."""
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      for alias in node.names:  # `from pkg import mod` imports mod; `from mod import f`, mod
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
  return {m for m in found if m in MODULES and m != name}


GRAPH = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def within(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix if prefix.endswith(".") else prefix + ".")


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_lower_layers_never_import_higher_ones(layer):
  bad = {m: sorted(i for i in GRAPH[m] if any(within(i, f) for f in FORBIDDEN[layer]))
         for m in GRAPH if within(m, layer)}
  assert not {m: i for m, i in bad.items() if i}


def test_the_reader_sees_function_level_and_relative_imports(tmp_path):
  """The check above can fail: a lazy import inside a function is found."""
  assert "dit_jax.models.contract" in GRAPH["dit_jax.models.dit"]
  assert "dit_jax.data" in GRAPH["dit_jax.eval.evaluate"]  # imported inside samples_evaluator


def test_no_import_cycles():
  """No module reaches itself (text.py once did, through data and a lazy import)."""
  def reachable(start):
    seen, stack = set(), [start]
    while stack:
      for m in GRAPH[stack.pop()] - seen:
        seen.add(m)
        stack.append(m)
    return seen
  assert [m for m in GRAPH if m in reachable(m)] == []


# House rules of the layout (issue 29): small modules, a thin CLI, imports at the top of a
# module unless they defer a heavy or optional dependency (each such import says so).
MAX_MODULE_LINES, MAX_CLI_LINES, MAX_FUNCTION_LEVEL_IMPORTS = 500, 350, 42


def function_level_imports(path: Path) -> list[int]:
  tree = ast.parse(path.read_text())
  top = set(map(id, tree.body))
  return [node.lineno for node in ast.walk(tree)
          if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top]


def test_modules_are_small_and_the_cli_thin():
  lines = {module_name(p): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
  assert {m: n for m, n in lines.items() if n > MAX_MODULE_LINES} == {}
  assert lines["dit_jax.cli"] <= MAX_CLI_LINES


def test_function_level_imports_are_few():
  found = {module_name(p): function_level_imports(p) for p in ROOT.rglob("*.py")}
  assert sum(map(len, found.values())) <= MAX_FUNCTION_LEVEL_IMPORTS, found


def test_the_house_rules_can_fail(tmp_path):
  """The counters above see what they count."""
  module = tmp_path / "m.py"
  module.write_text("import os\n\ndef f():\n  import json\n  if 1:\n    from x import y\n")
  assert function_level_imports(module) == [4, 6]
