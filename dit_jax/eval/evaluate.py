"""Scoring samples against a reference: `feature_net(spec)`, reference files and `evaluate`.

A reference is what the metrics need of the real images, in one feature net: the Gaussian
statistics (pool and, for Inception, spatial) and the pool features themselves (precision and
recall). It is read from

  - our own `.npz` (`Reference.save`, `dit-jax eval-ref`): mu, sigma[, mu_s, sigma_s], pool
    and the feature net that made it: its name and `net_id`, the digest of its weights
    (`FeatureNet.identity`), since samples scored in another net (a retrained classifier)
    get meaningless distances;
  - an ADM reference batch (VIRTUAL_imagenet256_labeled.npz): images in `arr_0`, whose
    features are computed here, and precomputed mu / sigma / mu_s / sigma_s, which are used
    for FID / sFID when present, as the ADM evaluator does;
  - any `.npz` of uint8 images in `arr_0` (a `dit-jax sample` output).

`samples_evaluator` is the training-time evaluator of kind 'samples' (`dit_jax.eval.evaluators`).
"""
import dataclasses

import jax
import numpy as np

from dit_jax import paths, state_files
from dit_jax.errors import DitJaxError, InputError, MissingFileError
from dit_jax.eval import metrics
from dit_jax.eval.features import Extractor, FeatureNet, inception_net
from dit_jax.models import contract
from dit_jax.sampling import images
from dit_jax.sampling.sampler import sample_in_batches, uniform_labels


def feature_net(spec: str, data_dir: str | None = None, log=print) -> FeatureNet:
  """'inception:FILE' (pytorch-fid's weights) or a bundled data set name ('digits/8'): its
  classifier, trained once and cached."""
  if spec.startswith("inception:"):
    return inception_net(spec.partition(":")[2])
  from dit_jax.eval.classifier import classifier_net
  return classifier_net(spec, data_dir, log=log)


@dataclasses.dataclass
class Reference:
  net: str                               # the feature net's name
  stats: metrics.GaussianStats           # of the pool features
  spatial: metrics.GaussianStats | None  # of the spatial features (Inception)
  pool: np.ndarray | None                # pool features (precision / recall); None: stats only
  net_id: str | None = None              # FeatureNet.identity; None: features of images here

  @classmethod
  def of_features(cls, net: FeatureNet, features: dict) -> "Reference":
    spatial = features.get("spatial")
    return cls(net.name, metrics.GaussianStats.of(features["pool"]),
               None if spatial is None else metrics.GaussianStats.of(spatial),
               features["pool"].astype(np.float32), net.identity)

  def save(self, path):
    arrays = dict(net=np.array(self.net), net_id=np.array(self.net_id), mu=self.stats.mu,
                  sigma=self.stats.sigma)
    if self.spatial is not None:
      arrays.update(mu_s=self.spatial.mu, sigma_s=self.spatial.sigma)
    if self.pool is not None:
      arrays["pool"] = self.pool
    state_files.write_npz(path, arrays)  # local or gs://


def load_reference(path, extractor: Extractor) -> Reference:
  """A reference in the extractor's feature net from any of the files the module names."""
  try:
    with paths.open_read(path) as f:
      return _read_reference(path, f, extractor)
  except FileNotFoundError:
    raise MissingFileError(f"reference {path} not found: write one with `dit-jax eval-ref`, or "
                           "pass an ADM reference batch (.npz with images in arr_0)") from None
  except images.NPZ_READ_ERRORS as e:
    raise images.npz_error(path, e) from None
  except ValueError as e:  # np.load of a file that is neither .npz nor .npy
    if isinstance(e, DitJaxError):
      raise
    raise images.npz_error(path, e) from None


def _read_reference(path, file, extractor: Extractor) -> Reference:
  net = extractor.net
  with np.load(file, allow_pickle=False) as f:
    keys = set(f.files)
    if "net" in keys:  # ours
      if str(f["net"]) != net.name:
        raise InputError(f"reference {path} holds {f['net']} features but the samples are "
                         f"scored with {net.name}: use the same feature net for both")
      _check_net_id(path, str(f["net_id"]) if "net_id" in keys else None, net)
      spatial = (metrics.GaussianStats(f["mu_s"], f["sigma_s"]) if "mu_s" in keys else None)
      return Reference(net.name, metrics.GaussianStats(f["mu"], f["sigma"]), spatial,
                       f["pool"] if "pool" in keys else None, net.identity)
    if "arr_0" not in keys:
      raise InputError(f"reference {path} has neither images (arr_0) nor dit_jax statistics "
                       f"(net, mu, sigma); it holds {sorted(keys)}")
    net.check_images(f["arr_0"], f"reference {path} images")  # named: not the samples
    ref = Reference.of_features(net, extractor(f["arr_0"]))
    if "mu" in keys and net.name == "inception":  # ADM's precomputed statistics win
      ref.stats = metrics.GaussianStats(f["mu"], f["sigma"])
      if "mu_s" in keys:
        ref.spatial = metrics.GaussianStats(f["mu_s"], f["sigma_s"])
    return ref


def _check_net_id(path, net_id: str | None, net: FeatureNet):
  """Refuses a reference of other weights under the same name (a retrained classifier gave
  FD 78.8 where its own reference gives 10), and one too old to record its weights."""
  fix = "recompute the reference with `dit-jax eval-ref` and the same --features / --inception"
  if net_id is None:
    raise InputError(f"reference {path} does not record which {net.name} weights made it (it "
                     f"predates that check), so it cannot be matched to the {net.name} net "
                     f"scoring the samples ({net.identity[:12]}): {fix}")
  if net_id != net.identity:
    raise InputError(f"reference {path} was computed with other {net.name} weights "
                     f"({net_id[:12]}) than the net scoring the samples ({net.identity[:12]}), "
                     f"e.g. a classifier retrained since: {fix}")


def evaluate(extractor: Extractor, samples: np.ndarray, reference: Reference,
             labels: np.ndarray | None = None) -> dict[str, float]:
  """Every metric the net and the reference allow, for uint8 samples (and their class
  labels, for conditional accuracy): fd (fid), sfd (sfid), is, precision, recall, accuracy."""
  net = extractor.net
  features = extractor(samples)
  stats = metrics.GaussianStats.of(features["pool"])
  out = {net.fd_name: metrics.frechet_distance(stats, reference.stats)}
  if "spatial" in features and reference.spatial is not None:
    out["s" + net.fd_name] = metrics.frechet_distance(
        metrics.GaussianStats.of(features["spatial"]), reference.spatial)
  if len(samples) >= metrics.IS_SPLITS:
    out["is"] = metrics.inception_score(features["logits"])[0]
  if reference.pool is not None:
    k = metrics.PR_NEIGHBOURS
    if min(len(samples), len(reference.pool)) > k:
      out["precision"], out["recall"] = metrics.precision_recall(reference.pool,
                                                                  features["pool"], k)
  if labels is not None and net.label_classes:
    out["accuracy"] = metrics.conditional_accuracy(features["logits"], labels)
  return out


def skipped_metrics(num_samples: int, reference: Reference) -> list[str]:
  """Why `evaluate` leaves out IS or precision / recall for this many samples (one line each):
  a score that silently vanishes reads as a bug."""
  notes, k = [], metrics.PR_NEIGHBOURS
  if num_samples < metrics.IS_SPLITS:
    notes.append(f"IS skipped: {num_samples} samples, it needs >= {metrics.IS_SPLITS} (one per "
                 "split)")
  if reference.pool is not None and min(num_samples, len(reference.pool)) <= k:
    notes.append(f"precision and recall skipped: {num_samples} samples and "
                 f"{len(reference.pool)} reference features, k={k} nearest neighbours need "
                 f"more than {k} of each")
  return notes


def check_labels(labels: np.ndarray, net: FeatureNet, where: str):
  """Refuses labels outside the classifier's classes: their accuracy would be 0 without a word."""
  if len(labels) and (labels.min() < 0 or labels.max() >= net.label_classes):
    raise InputError(f"{where}: labels {labels.min()}..{labels.max()} are outside the "
                     f"{net.label_classes} classes of the {net.name} classifier, so accuracy "
                     "would be 0: score samples with the feature net of the data set they were "
                     "drawn for (--features NAME)")


def evaluate_files(samples, ref, features: str, data_dir: str | None = None,
                   batch_size: int = 200, log=print) -> dict[str, float]:
  """`dit-jax eval`: the scores of the sample .npz against the reference file in the feature
  net `features` ('inception:FILE' or a bundled data set), with "samples", their count;
  `log` gets a line for each metric too few samples leave out."""
  extractor = Extractor(feature_net(features, data_dir), batch_size)
  drawn, labels = images.load_npz_images(samples)
  if len(drawn) < 2:
    raise InputError(f"samples {samples} hold {len(drawn)} images: the Fréchet distance needs "
                     "at least 2 (write more with `dit-jax sample --num N`)")
  extractor.net.check_images(drawn, f"samples {samples}")
  if labels is not None and extractor.net.label_classes:
    check_labels(np.asarray(labels), extractor.net, f"samples {samples}")
  reference = load_reference(ref, extractor)
  for note in skipped_metrics(len(drawn), reference):
    log(note)
  return {"samples": len(drawn), **evaluate(extractor, drawn, reference, labels)}


def write_reference(out, features: str, *, image_file=None, latents=None, data=None,
                    split: str = "test", image_size: int | None = None, num: int | None = None,
                    data_dir: str | None = None, batch_size: int = 200) -> str:
  """`dit-jax eval-ref`: writes the reference statistics of real images to `out`: the first
  `num` images of an .npz (`image_file`), of the data set a latent folder was encoded from
  (`latents`), or of a TFDS split (`data`). Returns a one-line summary."""
  from dit_jax import data as datasets  # deferred: TFDS and grain, only to read data sets
  extractor = Extractor(feature_net(features, data_dir), batch_size)
  if image_file:
    real, _ = images.load_npz_images(image_file)
    real = real[:num]
  elif latents:  # the images the latents were encoded from
    meta = datasets.latent_source.read_meta(latents)
    real, _ = datasets.read_images(meta["name"], meta["split"], data_dir, meta["image_size"],
                                   num)
  else:
    real, _ = datasets.read_images(data, split, data_dir, image_size, num)
  Reference.of_features(extractor.net, extractor(real)).save(out)
  return f"wrote {extractor.net.name} reference statistics of {len(real)} images to {out}"


def samples_evaluator(name: str, ec, run, log=print):
  """num_samples EMA samples with uniform labels, scored against the reference."""
  from dit_jax import data  # deferred: TFDS and grain, only to read the real images
  config, spec = run.config, run.model.condition_spec
  if set(spec) - {"label"}:
    raise InputError(f"config.evals.{name}: a 'samples' evaluator draws class labels or "
                     f"nothing, but {config.model.name} reads {sorted(spec)}; use a "
                     f"'composition' evaluator for captions, or remove config.evals.{name}")
  data_dir = config.data.data_dir
  net = feature_net(config.data.name if ec.features == "data" else ec.features, data_dir, log)
  extractor = Extractor(net, ec.batch_size, run.plan)
  if ec.reference:
    reference = load_reference(ec.reference, extractor)
  else:
    real, _ = data.read_images(config.data.name, ec.split, data_dir,
                               config.data.image_size)
    reference = Reference.of_features(net, extractor(real))
  sampler = run.sampler()
  labels = uniform_labels(ec.num_samples, contract.class_count(run.model), config.seed + 2)

  def action(step, state):
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), step)
    samples = np.concatenate(list(sample_in_batches(
        sampler, state.ema_params, labels, min(ec.batch_size, len(labels)), rng)))
    return evaluate(extractor, samples, reference, labels if "label" in spec else None)
  return action
