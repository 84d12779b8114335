"""Report rows of `dit-jax flops` and their formatting (table, csv, markdown, json): library
functions the CLI and the experiments share.

    rows = [flops_row(model, "DiT-B/4", 32, 32, 4)]
    print(format_rows(rows, "markdown"))

Every count comes through the model contract (`forward_flops`, `param_counts`), so any model
of a config has a row.
"""
import csv
import io
import json

from dit_jax.errors import InputError
from dit_jax.models import flops

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
