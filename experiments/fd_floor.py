"""The floor of a sweep's FD: real digits scored as if they were samples.

    python experiments/fd_floor.py [--data digits/8] [--sizes 300,1000] [--draws 20] \
        [--out experiments/results]

FD from n samples is biased upwards by about the trace of the sample covariance's error, which
shrinks like 1/n; a perfect model scores the FD of n real digits, not 0. This draws `--draws`
random sets of n training digits of --data (disjoint from the test reference) for each n and
scores them exactly as the sweeps' 'samples' evaluator scores samples (the data set's
classifier, against its test split), with their true labels for accuracy. Writes
fd_floor.md / fd_floor.json (digits/16: fd_floor_digits16.*) to --out.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from dit_jax import data
from dit_jax.eval.classifier import classifier_net
from dit_jax.eval.evaluate import Reference, evaluate
from dit_jax.eval.features import Extractor


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="digits/8", help="a bundled labelled data set")
  parser.add_argument("--sizes", default="300,1000")
  parser.add_argument("--draws", type=int, default=20)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
  args = parser.parse_args()

  net = classifier_net(args.data, args.data_dir)
  extractor = Extractor(net, 300)
  test, _ = data.read_images(args.data, "test", args.data_dir)
  reference = Reference.of_features(net, extractor(test))
  train, labels = data.read_images(args.data, "train", args.data_dir)
  rng = np.random.default_rng(0)
  rows = {}
  for n in map(int, args.sizes.split(",")):
    if n > len(train):
      raise SystemExit(f"--sizes: {n} is more than the {len(train)} training digits")
    scores = [evaluate(extractor, train[pick], reference, labels[pick])
              for pick in (rng.choice(len(train), n, replace=False) for _ in range(args.draws))]
    rows[n] = {k: dict(mean=float(np.mean([s[k] for s in scores])),
                       sd=float(np.std([s[k] for s in scores], ddof=1)),
                       low=float(np.min([s[k] for s in scores])),
                       high=float(np.max([s[k] for s in scores])))
               for k in ("fd", "accuracy", "precision", "recall")}

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = "fd_floor" + ("" if args.data == "digits/8" else "_" + args.data.replace("/", ""))
  (out / f"{stem}.json").write_text(json.dumps(
      dict(data=args.data, reference=f"{args.data} test ({len(test)} images)", train=len(train),
           draws=args.draws, rows=rows), indent=2))
  lines = [
      "# The floor of the digits FD: real digits scored as samples", "",
      f"`python experiments/fd_floor.py --data {args.data} --sizes {args.sizes} --draws "
      f"{args.draws}`: random sets of n of the {len(train)} {args.data} training digits, scored "
      f"against the {len(test)} test digits in the features of the {args.data} classifier, as "
      "the sweeps' 'samples' "
      "evaluator scores samples. A model whose samples were real digits would score this.", "",
      "| n | FD mean (sd) [min, max] | accuracy | precision | recall |", "|---|---|---|---|---|"]
  for n, r in rows.items():
    fd = r["fd"]
    lines.append(f"| {n} | {fd['mean']:.2f} ({fd['sd']:.2f}) [{fd['low']:.2f}, {fd['high']:.2f}] "
                 f"| {r['accuracy']['mean']:.3f} | {r['precision']['mean']:.3f} | "
                 f"{r['recall']['mean']:.3f} |")
  (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
