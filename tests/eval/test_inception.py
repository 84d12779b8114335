"""The FID Inception against pytorch-fid's own network, its resizes against closed forms and a
per-pixel loop, and the weight import's errors.

inception_reference.npz holds pytorch-fid 0.3.0's outputs for random weights and noise images
that inception_weights.py regenerates from seeds (make_inception_reference.py wrote it), so
the parity test needs no torch. Tolerance: |ours - ref| <= 1e-4 |ref| + 1e-4 max|ref| per
output; float32 on CPU agrees to about 2e-6 of max|ref|, and the mistakes this guards against
(padding counted in an average pool, TF's resize instead of torch's, one BatchNorm variance
off by 1%) move the outputs by 2e-3 to 4e-1 of max|ref|.
"""
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.convert.io import save_tensors
from dit_jax.eval import inception as inc
from inception_weights import SEED, noise_images, random_state_dict

REFERENCE = Path(__file__).with_name("inception_reference.npz")
OUTPUTS = {"pool": 2048, "spatial": 17 * 17 * 7, "logits": 1008}


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def state():
  return random_state_dict(SEED)


@pytest.fixture(scope="module")
def params(state):
  return inc.inception_params(state)


def test_matches_pytorch_fid(reference, params):
  assert int(reference["weight_seed"]) == SEED
  images = [noise_images(int(seed), tuple(shape))
            for seed, shape in zip(reference["image_seeds"], reference["image_shapes"])]
  assert {im.shape[1] < inc.IMAGE_SIZE for im in images} == {True, False}  # up and down
  x = jnp.concatenate([inc.preprocess(im, "pytorch_fid") for im in images])
  out = jax.jit(inc.FIDInception().apply)({"params": params}, x)
  for name, width in OUTPUTS.items():
    ours, ref = np.asarray(out[name]), reference[name]
    assert ours.shape == ref.shape == (len(x), width) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)


def test_state_dict_table_matches_torchvision(reference):
  """Names and shapes from dit_jax's module equal pytorch-fid's network's state dict (less
  fc.bias, which no output uses)."""
  keys = [k.decode() for k in reference["keys"]]
  theirs = {k: tuple(int(n) for n in s if n) for k, s in zip(keys, reference["shapes"])}
  theirs.pop("fc.bias")
  assert inc.state_dict_shapes() == theirs
  assert sum(np.prod(s) for s in theirs.values()) == 23_884_384


# ---- resize ----

def _resize_h(values, n_out, half_pixel_centers):
  """1-D resize of `values` along H, then along W, through resize_bilinear."""
  column = jnp.asarray(values, jnp.float32)[None, :, None, None]
  along_h = inc.resize_bilinear(column, (n_out, 1), half_pixel_centers=half_pixel_centers)
  along_w = inc.resize_bilinear(column.transpose(0, 2, 1, 3), (1, n_out),
                                half_pixel_centers=half_pixel_centers)
  np.testing.assert_array_equal(along_h[0, :, 0, 0], along_w[0, 0, :, 0])
  return np.asarray(along_h[0, :, 0, 0])


def test_resize_by_hand():
  # TF1 legacy: source dst * in / out, upper neighbour clamped.
  np.testing.assert_allclose(_resize_h([10, 30], 4, False), [10, 20, 30, 30])
  np.testing.assert_allclose(_resize_h([10, 20, 40, 80], 2, False), [10, 40])
  # torch: source (dst + 0.5) * in / out - 0.5, clamped at 0.
  np.testing.assert_allclose(_resize_h([10, 30], 4, True), [10, 15, 25, 30])
  np.testing.assert_allclose(_resize_h([10, 20, 40, 80], 2, True), [15, 60])


@pytest.mark.parametrize("half_pixel_centers", [False, True])
def test_resize_identity_and_weights_sum_to_one(half_pixel_centers):
  for n_in, n_out in [(1, 5), (7, 3), (32, 299), (512, 299), (299, 300)]:
    m = inc.interpolation_matrix(n_in, n_out, half_pixel_centers=half_pixel_centers)
    assert m.shape == (n_out, n_in) and m.min() >= 0
    np.testing.assert_allclose(m.sum(1), 1, atol=1e-6)
  np.testing.assert_array_equal(
      inc.interpolation_matrix(299, 299, half_pixel_centers=half_pixel_centers), np.eye(299))
  x = np.random.RandomState(0).rand(2, 6, 5, 3).astype(np.float32)
  np.testing.assert_array_equal(
      inc.resize_bilinear(x, (6, 5), half_pixel_centers=half_pixel_centers), x)


def _four_neighbour_resize(image_HW, h_out, w_out, half_pixel_centers):
  """The per-pixel loop both libraries run: source coordinates, four neighbours, two lerps."""
  def source(dst, n_in, n_out):
    s = (dst + 0.5) * n_in / n_out - 0.5 if half_pixel_centers else dst * n_in / n_out
    lo = int(np.floor(max(s, 0.0)))
    return lo, min(lo + 1, n_in - 1), max(s, 0.0) - lo
  out = np.zeros((h_out, w_out))
  for i in range(h_out):
    top, bottom, dy = source(i, image_HW.shape[0], h_out)
    for j in range(w_out):
      left, right, dx = source(j, image_HW.shape[1], w_out)
      t = image_HW[top, left] + (image_HW[top, right] - image_HW[top, left]) * dx
      b = image_HW[bottom, left] + (image_HW[bottom, right] - image_HW[bottom, left]) * dx
      out[i, j] = t + (b - t) * dy
  return out


@pytest.mark.parametrize("half_pixel_centers", [False, True])
@pytest.mark.parametrize("size", [(3, 11), (12, 4)])
def test_resize_matches_per_pixel_loop(half_pixel_centers, size):
  image = noise_images(5, (1, 5, 7, 3)).astype(np.float64)
  ours = inc.resize_bilinear(image.astype(np.float32), size,
                             half_pixel_centers=half_pixel_centers)
  for c in range(3):
    expected = _four_neighbour_resize(image[0, :, :, c], *size, half_pixel_centers)
    np.testing.assert_allclose(ours[0, :, :, c], expected, atol=1e-4)


# ---- preprocess ----

def test_preprocess_modes_at_299_differ_only_in_the_affine():
  images = noise_images(3, (2, 299, 299, 3))
  x = images.astype(np.float32)
  adm, pytorch_fid = inc.preprocess(images, "adm"), inc.preprocess(images, "pytorch_fid")
  assert adm.shape == pytorch_fid.shape == (2, 299, 299, 3) and adm.dtype == jnp.float32
  np.testing.assert_array_equal(adm, (x - 128) / 128)  # exact: 128 is a power of two
  np.testing.assert_allclose(pytorch_fid, x / 127.5 - 1, atol=1e-6)
  np.testing.assert_allclose(pytorch_fid, (adm * 128 + 128) / 127.5 - 1, atol=1e-6)


def test_preprocess_grayscale_and_jit():
  gray = noise_images(4, (2, 20, 30, 1))
  for mode in inc.MODES:
    ours = jax.jit(inc.preprocess, static_argnames="mode")(gray, mode=mode)
    np.testing.assert_array_equal(ours, inc.preprocess(np.repeat(gray, 3, -1), mode))
    assert ours.shape == (2, 299, 299, 3) and -1 <= ours.min() and ours.max() <= 1


@pytest.mark.parametrize("images", [np.zeros((2, 8, 8, 3), np.float32),
                                    np.zeros((8, 8, 3), np.uint8),
                                    np.zeros((2, 8, 8, 4), np.uint8)])
def test_preprocess_refuses_other_inputs(images):
  with pytest.raises(ValueError, match=r"uint8 images \(B, H, W, 3\)"):
    inc.preprocess(images, "adm")


def test_preprocess_refuses_unknown_mode():
  with pytest.raises(ValueError, match="'tf'.*'adm', 'pytorch_fid'"):
    inc.preprocess(np.zeros((1, 8, 8, 3), np.uint8), "tf")


def test_network_takes_299_only_and_returns_float32_in_bfloat16():
  model = inc.FIDInception(dtype=jnp.bfloat16)
  out = jax.eval_shape(model.apply, {"params": inc.abstract_params()},
                       jax.ShapeDtypeStruct((3, 299, 299, 3), jnp.float32))
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      k: ((3, width), jnp.float32) for k, width in OUTPUTS.items()}
  with pytest.raises(ValueError, match=r"\(B, 299, 299, 3\).*\(3, 256, 256, 3\)"):
    jax.eval_shape(model.apply, {"params": inc.abstract_params()},
                   jax.ShapeDtypeStruct((3, 256, 256, 3), jnp.float32))


# ---- weight import ----

def test_params_follow_state_dict_names(state, params):
  np.testing.assert_array_equal(params["Mixed_6d"]["branch1x1"]["conv"]["kernel"],
                                state["Mixed_6d.branch1x1.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(params["fc"]["kernel"], state["fc.weight"].T)


def test_load_npz_with_ignored_keys(tmp_path, state, params):
  """pytorch-fid's file also holds fc.bias and BatchNorm step counters: read and dropped."""
  path = tmp_path / "inception.npz"
  save_tensors(path, {**state, "fc.bias": np.zeros(1008, np.float32),
                      "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0, np.int64)})
  loaded = inc.load_inception(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def _import_error(state) -> str:
  with pytest.raises(ValueError) as error:
    inc.inception_params(state, source="weights.npz")
  message = str(error.value)
  assert "weights.npz" in message and inc.WEIGHTS_FILE in message
  return message


def test_missing_key_is_named(state):
  broken = {k: v for k, v in state.items() if k != "Mixed_6d.branch1x1.conv.weight"}
  assert "missing (1): Mixed_6d.branch1x1.conv.weight" in _import_error(broken)


def test_wrong_shape_is_named(state):
  message = _import_error({**state, "fc.weight": np.zeros((1000, 2048), np.float32)})
  assert "wrong shape (1): fc.weight: expected (1008, 2048), found (1000, 2048)" in message


def test_unexpected_keys_are_named_first_few(state):
  extra = {f"AuxLogits.conv{i}.weight": np.zeros(1) for i in range(7)}
  message = _import_error({**state, **extra})
  assert "unexpected (7): AuxLogits.conv0.weight; " in message and message.endswith("; ...")
  assert "AuxLogits.conv6" not in message


def test_missing_file_names_pytorch_fid_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nothing\.pth.*" + re.escape(inc.WEIGHTS_FILE)):
    inc.load_inception(tmp_path / "nothing.pth")
