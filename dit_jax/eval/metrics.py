"""The sample-quality metrics of the DiT-family papers, as the ADM evaluator defines them.

Pure functions of feature arrays (numpy in, Python floats out), so that any feature network
serves: FID / sFID (Fréchet distance of Gaussians fitted to the features, float64), Inception
Score (exp of the mean KL between each sample's class posterior and their mean, over 10
splits), improved precision and recall (Kynkäänniemi et al. 2019: a point is on a manifold
when it lies within the distance of some reference point to that point's k-th nearest
neighbour, k = 3) and the accuracy of class-conditional samples under a classifier.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.errors import InputError

PR_NEIGHBOURS = 3        # k of the k-NN radii, as the ADM evaluator
IS_SPLITS = 10           # the Inception Score is the mean over this many splits
_BLOCK = 1024            # rows of one pairwise-distance block (memory: block x N floats)


@dataclasses.dataclass(frozen=True)
class GaussianStats:
  """Mean and covariance (float64, ddof=1 as np.cov) of a set of feature vectors."""
  mu: np.ndarray
  sigma: np.ndarray

  @classmethod
  def of(cls, features_ND) -> "GaussianStats":
    x = np.asarray(features_ND, np.float64)
    if x.ndim != 2 or len(x) < 2:
      raise InputError(f"statistics need at least 2 feature vectors (N, D); got shape {x.shape}")
    return cls(x.mean(axis=0), np.cov(x, rowvar=False))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
  """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

  tr (S_a S_b)^(1/2) is the sum of the square roots of the eigenvalues of the symmetric
  positive semi-definite S_a^(1/2) S_b S_a^(1/2), which has the same spectrum: two symmetric
  eigendecompositions instead of the general matrix square root of a non-symmetric product,
  so no imaginary parts and no eps retry (the ADM evaluator's scipy.linalg.sqrtm route).
  """
  if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
    raise InputError(f"statistics of different feature sizes: {a.mu.shape} and {b.mu.shape}; "
                     "both sides must come from the same feature network")
  diff = a.mu - b.mu
  root_a = _psd_sqrt(a.sigma)
  middle = root_a @ b.sigma @ root_a
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
  return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def inception_score(logits_NK, splits: int = IS_SPLITS) -> tuple[float, float]:
  """(mean, std) over `splits` equal parts of exp(E_x KL(p(y|x) || p(y))), p(y) the mean
  posterior of the part. With 50,000 samples the parts are ADM's 5,000."""
  logits = np.asarray(logits_NK, np.float64)
  if len(logits) < splits:
    raise InputError(f"inception score over {splits} splits needs >= {splits} samples, "
                     f"got {len(logits)}")
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = np.log(np.exp(part).mean(axis=0))
    kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _squared_distances(u_BD, v_ND):
  """Pairwise squared Euclidean distances in float32, clamped at 0 (the ADM formula)."""
  uu = jnp.sum(u_BD * u_BD, axis=1)[:, None]
  vv = jnp.sum(v_ND * v_ND, axis=1)[None, :]
  return jnp.maximum(uu - 2.0 * u_BD @ v_ND.T + vv, 0.0)


@functools.partial(jax.jit, static_argnums=2)
def _kth_smallest(u_BD, v_ND, k: int):
  return -jax.lax.top_k(-_squared_distances(u_BD, v_ND), k + 1)[0][:, k]


@jax.jit
def _within_any(u_BD, v_ND, radii_N):
  return jnp.any(_squared_distances(u_BD, v_ND) <= radii_N[None, :], axis=1)


def _blocks(x_ND: np.ndarray):
  """x in row blocks of _BLOCK (the last zero-padded: one compiled shape), with their sizes."""
  for start in range(0, len(x_ND), _BLOCK):
    block = x_ND[start:start + _BLOCK]
    yield np.pad(block, ((0, _BLOCK - len(block)), (0, 0))), len(block)


def knn_radii(features_ND, k: int = PR_NEIGHBOURS) -> np.ndarray:
  """Squared distance of each point to its k-th nearest neighbour in the set (the point
  itself, at distance 0, counts as the 0-th, as in the ADM evaluator)."""
  x = np.asarray(features_ND, np.float32)
  if len(x) <= k:
    raise InputError(f"k-NN radii with k={k} need more than {k} feature vectors, got {len(x)}")
  v = jnp.asarray(x)
  return np.concatenate([np.asarray(_kth_smallest(jnp.asarray(b), v, k))[:n]
                         for b, n in _blocks(x)])


def fraction_within(points_ND, manifold_MD, radii_M) -> float:
  """Fraction of `points` within radius of some point of the manifold (squared distances)."""
  v, r = jnp.asarray(np.asarray(manifold_MD, np.float32)), jnp.asarray(radii_M)
  inside = [np.asarray(_within_any(jnp.asarray(b), v, r))[:n]
            for b, n in _blocks(np.asarray(points_ND, np.float32))]
  return float(np.concatenate(inside).mean())


def precision_recall(real_ND, fake_MD, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
  """Improved precision (share of samples on the real manifold) and recall (share of real
  points on the samples' manifold)."""
  precision = fraction_within(fake_MD, real_ND, knn_radii(real_ND, k))
  recall = fraction_within(real_ND, fake_MD, knn_radii(fake_MD, k))
  return precision, recall


def conditional_accuracy(logits_NK, labels_N) -> float:
  """Share of class-conditional samples that the classifier assigns to their label."""
  logits, labels = np.asarray(logits_NK), np.asarray(labels_N)
  if logits.shape[:1] != labels.shape or labels.ndim != 1:
    raise InputError(f"one label per sample: logits {logits.shape}, labels {labels.shape}")
  return float(np.mean(np.argmax(logits, axis=1) == labels))
