"""Loading ml-collections configs: `path/to/config.py[:arg]` plus `--config.a.b=value` overrides."""
import ast
import importlib.util
from pathlib import Path

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports the file in `spec` ('configs/dit.py:DiT-B/4') and returns get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise FileNotFoundError(f"config file {path!r} not found: pass --config path/to/file.py[:arg]")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str, current):
  """Parses an override to the type of the field it replaces."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected true/false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, (int, float)):
    return type(current)(ast.literal_eval(text))
  if isinstance(current, str) or current is None:
    return text
  return type(current)(ast.literal_eval(text))


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """Applies ['model.depth=4', ...] in place; unknown keys are an error naming the key."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} must look like --config.section.field=value")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"--config.{key}: config has no section {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"--config.{key}: config has no field {leaf!r}; fields here: "
                     f"{sorted(node.keys())}")
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--config.{key}={text!r}: {e}") from None
  return config
