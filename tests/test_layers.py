"""Import layering of dit_jax, read from the source with `ast` (function-level imports
included): a lower layer never imports a higher one, and no module imports itself back."""
import ast
from pathlib import Path

import pytest

import dit_jax

ROOT = Path(dit_jax.__file__).parent
ENGINE = ("dit_jax.train", "dit_jax.vae_train", "dit_jax.checkpoint", "dit_jax.training_log",
          "dit_jax.cli", "dit_jax.bench", "dit_jax.sample", "dit_jax.reports", "dit_jax.aot",
          "dit_jax.sweep", "dit_jax.sweep_report", "dit_jax.evaluators")
# layer prefix -> prefixes it must not import
FORBIDDEN = {
    "dit_jax.nn": ("dit_jax.models", "dit_jax.flow", "dit_jax.data", "dit_jax.convert",
                   *ENGINE),
    "dit_jax.models": ("dit_jax.flow", "dit_jax.data", "dit_jax.convert", *ENGINE),
    "dit_jax.flow": ("dit_jax.models", "dit_jax.data", "dit_jax.convert", *ENGINE),
    # evaluation reads images and feature nets: it trains its classifier on the engine but
    # knows nothing of the denoisers, their objectives and samplers, or the commands
    "dit_jax.eval": ("dit_jax.models", "dit_jax.flow", "dit_jax.train", "dit_jax.sample",
                     "dit_jax.cli", "dit_jax.bench", "dit_jax.aot", "dit_jax.vae_train"),
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
  return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_lower_layers_never_import_higher_ones(layer):
  bad = {m: sorted(i for i in GRAPH[m] if any(within(i, f) for f in FORBIDDEN[layer]))
         for m in GRAPH if within(m, layer)}
  assert not {m: i for m, i in bad.items() if i}


def test_the_reader_sees_function_level_and_relative_imports(tmp_path):
  """The check above can fail: a lazy import inside a function is found."""
  assert "dit_jax.models.contract" in GRAPH["dit_jax.models.dit"]
  assert "dit_jax.data.tokenizers" in GRAPH["dit_jax.cli"]  # imported inside _sample_captions


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
