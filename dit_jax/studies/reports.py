"""Report rows of `dit-jax flops` and their formatting (table, csv, markdown, json): library
functions the CLI and the experiments share.

    rows = [flops_row(model, "DiT-B/4", 32, 32, 4)]
    print(format_rows(rows, "markdown"))
    print(format_rows(flops_rows("XL/2,B/4", image_size=512), "table"))

Every count comes through the model contract (`forward_flops`, `param_counts`), so any model
of a config has a row.
"""
import csv
import io
import json

from dit_jax import paths, state_files
from dit_jax.config import apply_overrides, load_config, model_input_shape
from dit_jax.errors import InputError
from dit_jax.models import create_model, flops
from dit_jax.models.dit import PRESETS, dit

FORMATS = ("table", "json", "csv", "markdown")


def flops_row(model, name: str, height: int, width: int, channels: int,
              with_xla: bool = False) -> dict:
  """One row: Gflops and parameters of `model` on a (height, width, channels) input, in total
  and per component; with_xla adds XLA's cost analysis of the compiled forward (/2)."""
  counts = model.forward_flops(height, width, channels)
  params = model.param_counts(height, width, channels)
  patch = getattr(model, "patch_size", 1)  # the U-Net has none: every pixel is a token
  row = {
      "model": name,
      "patch_size": patch,
      "conditioning": getattr(model, "conditioning", type(model).__name__),
      "input": [height, width, channels],
      "tokens": (height // patch) * (width // patch),
      "gflops": sum(counts.values()) / 1e9,
      "params": (sum(params.values()) if params is not None
                 else flops.count_params(model, height, width, channels)),
      "gflops_by_component": {k: v / 1e9 for k, v in counts.items()},
  }
  if params is not None:
    row["params_by_component"] = params
  if (height, width, channels) == (32, 32, 4) and name in flops.PAPER_GFLOPS_256 and (
      model.conditioning == "adaln_zero" and model.learn_sigma and model.num_classes == 1000):
    row["paper_gflops"] = flops.PAPER_GFLOPS_256[name]  # the paper's design and input only
  if with_xla:
    row["xla_gflops"] = flops.xla_flops(model, height, width, channels) / 2 / 1e9
  return row


def model_names(spec: str) -> list[str]:
  """DiT preset names of a comma list such as "XL/2,B/4" (the "DiT-" is optional), or "all"."""
  if spec == "all":
    return list(PRESETS)
  return [n if n.startswith("DiT-") else f"DiT-{n}" for n in spec.split(",") if n]


def flops_rows(models: str = "all", *, config: str | None = None, overrides=(),
               image_size: int = 256, latent_downsample: int = 8, channels: int = 4,
               conditioning: str = "adaln_zero", num_classes: int = 1000,
               learn_sigma: bool = True, with_xla: bool = False) -> list[dict]:
  """One row per DiT preset of `models` on image_size / latent_downsample latents, or the one
  row of the model of a `config` file (with "section.field=value" overrides)."""
  if config:
    cfg = apply_overrides(load_config(config), overrides)
    named = [(cfg.model.name, create_model(cfg.model))]
    *size, channels = model_input_shape(cfg.data)
  else:
    if overrides:
      raise InputError(f"--config.* overrides need --config: got {list(overrides)}")
    if image_size % latent_downsample:
      raise InputError(f"--image-size {image_size} is not divisible by "
                       f"--latent-downsample {latent_downsample}")
    side = image_size // latent_downsample
    kw = dict(conditioning=conditioning, num_classes=num_classes, learn_sigma=learn_sigma)
    named = [(name, dit(name, **kw)) for name in model_names(models)]
    size = (side, side)
  return [flops_row(model, name, *size, channels, with_xla=with_xla) for name, model in named]


def _columns(rows):
  cols = [("model", "model", "{}"), ("patch", "patch_size", "{}"), ("tokens", "tokens", "{}"),
          ("Gflops", "gflops", "{:.3f}")]
  if any("paper_gflops" in r for r in rows):
    cols.append(("paper Gflops", "paper_gflops", "{:.2f}"))
  if any("xla_gflops" in r for r in rows):
    cols += [("XLA Gflops/2", "xla_gflops", "{:.3f}"), ("XLA/analytic", "xla_ratio", "{:.4f}")]
  cols.append(("params (M)", "params_m", "{:.2f}"))
  return cols


def _cells(row, cols):
  values = dict(row, params_m=row["params"] / 1e6)
  if "xla_gflops" in row:
    values["xla_ratio"] = row["xla_gflops"] / row["gflops"]
  return [fmt.format(values[key]) if key in values else "" for _, key, fmt in cols]


def format_rows(rows: list[dict], fmt: str) -> str:
  """Rows as an aligned table, csv, markdown or json."""
  if fmt not in FORMATS:
    raise InputError(f"format {fmt!r} is not one of {FORMATS}")
  if fmt == "json":
    return json.dumps(rows, indent=2)
  cols = _columns(rows)
  header = [title for title, _, _ in cols]
  body = [_cells(r, cols) for r in rows]
  if fmt == "csv":
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[key for _, key, _ in cols], *body])
    return out.getvalue().rstrip("\n")
  if fmt == "markdown":
    return markdown_table(header, body)
  widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
  line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
  return "\n".join([line(header)] + [line(cells) for cells in body])


def save_figure(fig, path, **savefig_kwargs):
  """Writes a matplotlib figure to `path`, local or gs://, in the format of its suffix
  (.png, .pdf, .svg), published whole."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=paths.as_path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
  state_files.write_atomic(path, buffer.getvalue())


def markdown_table(header, body) -> str:
  """A markdown table: the `header` cells, then one row of cells per item of `body`."""
  row = lambda cells: "| " + " | ".join(cells) + " |"
  return "\n".join([row(header), "|" + "---|" * len(header), *map(row, body)])


def format_scores(scores: dict, fmt: str) -> str:
  """Evaluation metrics ({name: number}) as `name  value` lines, one markdown / csv row, or
  json."""
  if fmt == "json":
    return json.dumps(scores, indent=2)
  cells = {k: f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in scores.items()}
  if fmt == "csv":
    return ",".join(cells) + "\n" + ",".join(cells.values())
  if fmt == "markdown":
    return markdown_table(cells, [cells.values()])
  width = max(map(len, cells))
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in cells.items())
