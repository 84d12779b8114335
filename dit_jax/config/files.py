"""Loading a config file `path/to/config.py[:arg]` (its `get_config(arg)`) and applying
`--config.a.b=value` overrides or a sweep's field sets, each validated."""
import ast
import contextlib
import importlib.util
import math
import traceback
from pathlib import Path

import ml_collections

from dit_jax.config.checks import validate
from dit_jax.config.schema import ConfigError, rename_model
from dit_jax.errors import DitJaxError, InputError, MissingFileError

def config_module(spec: str):
  """(the imported config file of `spec` 'configs/dit.py:DiT-B/4', its argument 'DiT-B/4')."""
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise MissingFileError(f"config file {path!r} not found: pass --config path/to/file.py[:arg]")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  if module_spec is None or module_spec.loader is None or not path.endswith(".py"):
    raise ConfigError(f"--config {path} is not a Python config file: pass a .py file with a "
                      "get_config(arg) function, e.g. configs/quickstart.py")
  module = importlib.util.module_from_spec(module_spec)
  with config_code(path):
    module_spec.loader.exec_module(module)
  return module, arg


PACKAGE = Path(__file__).resolve().parents[1]  # dit_jax/


@contextlib.contextmanager
def config_code(path: str):
  """Runs the code of config file `path` (importing it, calling its get_config): an error of
  that code itself (a syntax error, an exception raised in the file) is a ConfigError naming
  the file, its line and the error, not a dit-jax bug; --debug still shows the traceback."""
  try:
    yield
  except DitJaxError:
    raise
  except Exception as e:
    where = Path(path).resolve()
    frames = traceback.extract_tb(e.__traceback__)
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == where:
      line = e.lineno
    else:
      lines = [f.lineno for f in frames if Path(f.filename).resolve() == where]
      if not lines or Path(frames[-1].filename).resolve().is_relative_to(PACKAGE):
        raise  # not in the file, or raised inside dit-jax: a bug, with its traceback
      line = lines[-1]
    raise ConfigError(f"--config {path}, line {line}: {type(e).__name__}: {e}; fix the config "
                      "file (--debug shows the traceback)") from e


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports the file in `spec` ('configs/dit.py:DiT-B/4'), returns get_config(arg), validated."""
  module, arg = config_module(spec)
  path = spec.partition(":")[0]
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config {path} has no get_config(arg) function: a config file defines "
                      "one returning the config, e.g. configs/quickstart.py")
  with config_code(path):
    config = module.get_config(arg) if arg else module.get_config()
  return validate(config)


def _parse_value(text: str, current):
  """Parses an override to the type of the field it replaces; ValueError says what it needs."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise InputError("expected true or false")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    try:
      value = float(text) if not text.lstrip("+-").isdigit() else int(text)
    except ValueError:
      raise InputError("expected an integer such as 64") from None
    if not (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
      raise InputError("expected an integer such as 64, not a fraction (it is not rounded)")
    return int(value)
  if isinstance(current, float):
    try:
      return float(text)  # also 1e-4, nan and inf, which validate() judges per field
    except ValueError:
      raise InputError("expected a number such as 0.001 or 1e-4") from None
  if current is None:  # untyped until set: a Python literal if it parses, else a string
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if isinstance(current, str):
    return text
  try:
    return type(current)(ast.literal_eval(text))
  except (ValueError, SyntaxError, TypeError):
    raise InputError(f"expected a Python literal of type {type(current).__name__}, such as "
                     f"{current!r}") from None


def _field(config, key: str, where: str):
  """(the section holding `key` 'model.depth', the leaf name); errors name `where`."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise ConfigError(f"{where}: config has no section {part!r}")
    node = node[part]
  if leaf not in node:
    raise ConfigError(f"{where}: config has no field {leaf!r}; fields here: "
                      f"{sorted(node.keys())}")
  return node, leaf


def _assign(config, node, key: str, leaf: str, value):
  if key == "model.name" and value != node[leaf]:
    config.model = rename_model(config.model, value)
  else:
    node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """Applies ['model.depth=4', ...] in place and validates the result; unknown keys are an
  error naming the key. A new model.name re-bases the model section (`rename_model`)."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} must look like --config.section.field=value")
    node, leaf = _field(config, key, f"--config.{key}")
    try:
      value = _parse_value(text, node[leaf])
    except ValueError as e:
      raise ConfigError(f"--config.{key}={text!r}: {e}") from None
    _assign(config, node, key, leaf, value)
  return validate(config)


def set_fields(config: ml_collections.ConfigDict, fields: dict, where: str = "field"):
  """Sets {'model.depth': 4, 'model': model_section(...), ...} (Python values, a sweep's
  override sets) in place and validates the result; `where` names them in errors."""
  for key, value in fields.items():
    node, leaf = _field(config, key, f"{where} {key!r}")
    if isinstance(value, dict) and not isinstance(value, ml_collections.ConfigDict):
      value = ml_collections.ConfigDict(value)
    try:
      _assign(config, node, key, leaf, value)
    except TypeError as e:  # ConfigDict refuses a value of another type than the field's
      raise ConfigError(f"{where} {key}={value!r}: {e}") from None
  try:
    return validate(config)
  except ConfigError as e:
    raise ConfigError(f"{where} {sorted(fields)}: {e}") from None


