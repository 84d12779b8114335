"""Figures for the study tools (matplotlib, written to PNG)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from dit_jax.studies.reports import save_figure  # noqa: E402


def plot_flops(rows: list[dict], path: str):
  """Left: Gflops against patch size per model size (log scale). Right: parameters vs Gflops."""
  fig, (ax_patch, ax_params) = plt.subplots(1, 2, figsize=(11, 4.2))
  sizes = {}
  for row in rows:
    sizes.setdefault(row["model"].split("/")[0], []).append(row)
  for size, group in sizes.items():
    group = sorted(group, key=lambda r: r["patch_size"])
    gflops = [r["gflops"] for r in group]
    ax_patch.plot([r["patch_size"] for r in group], gflops, "o-", label=size)
    ax_params.plot(gflops, [r["params"] / 1e6 for r in group], "o", label=size)
    for r in group:
      ax_params.annotate(f"/{r['patch_size']}", (r["gflops"], r["params"] / 1e6), fontsize=7,
                         xytext=(3, 3), textcoords="offset points")
  ax_patch.set(xscale="log", yscale="log", xlabel="patch size p", ylabel="forward Gflops",
               title="Gflops vs patch size")
  ax_patch.set_xticks(sorted({r["patch_size"] for r in rows}))
  ax_patch.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax_patch.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax_params.set(xscale="log", xlabel="forward Gflops", ylabel="parameters (M)",
                title="parameters vs Gflops")
  for ax in (ax_patch, ax_params):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  h, w, c = rows[0]["input"]
  fig.suptitle(f"DiT forward cost on {h}x{w}x{c} inputs (multiply-add = 1 flop)")
  fig.tight_layout()
  save_figure(fig, path, dpi=120)  # local or gs://
  plt.close(fig)


def plot_loss_by_t(rows: list[dict], path: str):
  """`dit-jax eval-loss`'s rows: the loss against t, one colour per checkpoint step, the EMA
  parameters solid and the raw ones dashed."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for i, step in enumerate(sorted({r["step"] for r in rows})):
    group = sorted((r for r in rows if r["step"] == step), key=lambda r: r["t"])
    t = [r["t"] for r in group]
    ax.plot(t, [r["ema"] for r in group], "o-", color=f"C{i % 10}", label=f"step {step} EMA")
    if all("raw" in r for r in group):
      ax.plot(t, [r["raw"] for r in group], "s--", color=f"C{i % 10}", alpha=0.6,
              label=f"step {step} raw")
  ax.set(xlabel="t (0: noise, 1: data)", ylabel="loss", yscale="log",
         title="loss by noise level (fixed held-out batch and noise)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)  # local or gs://
  plt.close(fig)
