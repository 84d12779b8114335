"""Reproduces the DiT paper's cost tables and writes them under experiments/results/.

    python experiments/dit_flops.py [--out experiments/results] [--no-xla]

Writes:
  dit_flops_256.md      the 12 presets at 256x256 (32x32x4 latents): analytic Gflops, the
                        paper's Table 4, XLA's cost analysis / 2, parameters
  dit_designs_xl2.md    DiT-XL/2 with each conditioning design (the paper's Figure 3/5 ablation)
  dit_flops.png         Gflops vs patch size and parameters vs Gflops
"""
import argparse
from pathlib import Path

from dit_jax.models import flops
from dit_jax.models.dit import CONDITIONINGS, PRESETS, dit
from dit_jax.studies.plots import plot_flops
from dit_jax.studies.reports import flops_row, format_rows


def preset_rows(with_xla: bool) -> list[dict]:
  rows = []
  for name in PRESETS:
    row = flops_row(dit(name), name, 32, 32, 4, with_xla=with_xla)
    row["paper_gflops"] = flops.PAPER_GFLOPS_256[name]
    rows.append(row)
  return rows


def design_table() -> str:
  lines = ["| conditioning | Gflops | vs adaLN-Zero | params (M) |", "|---|---|---|---|"]
  base = flops_row(dit("DiT-XL/2"), "DiT-XL/2", 32, 32, 4)["gflops"]
  for design in CONDITIONINGS:
    row = flops_row(dit("DiT-XL/2", conditioning=design), "DiT-XL/2", 32, 32, 4)
    lines.append(f"| {design} | {row['gflops']:.2f} | {row['gflops'] / base - 1:+.1%} | "
                 f"{row['params'] / 1e6:.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--no-xla", action="store_true", help="skip compiling each model")
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rows = preset_rows(with_xla=not args.no_xla)
  (out / "dit_flops_256.md").write_text(format_rows(rows, "markdown") + "\n")
  (out / "dit_designs_xl2.md").write_text(design_table() + "\n")
  plot_flops(rows, str(out / "dit_flops.png"))
  print((out / "dit_flops_256.md").read_text())
  print((out / "dit_designs_xl2.md").read_text())


if __name__ == "__main__":
  main()
