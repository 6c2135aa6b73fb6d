"""Tests for jaxtl.randaugment against PIL (Pillow) on real images.

Every op is compiled once per image set and run on all images x levels x
signs in one vmapped call; the PIL reference (`jaxtl.randaugment_pil`, written
from the PIL API independently of the JAX code) applies the same level -> op
argument mapping image by image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_digits

from jaxtl import randaugment as ra
from jaxtl.randaugment_pil import pil_op

FILL = 128
LEVELS = (0.0, 4.0, 10.0, 17.5, 20.0, 27.0, 30.0)
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


# ----------------------------------------------------------------------------
# Images and the PIL reference.
# ----------------------------------------------------------------------------


def _resize(array, mode, width, height):
  image = Image.fromarray(array).convert(mode)
  image = np.asarray(image.resize((width, height), Image.BILINEAR))
  return image.reshape(height, width, -1)


def _with_low_contrast(images):
  """Adds a low-contrast copy of each image (exercises autocontrast)."""
  return np.concatenate([images, images // 3 + 60]).astype(np.uint8)


@functools.cache
def image_sets():
  """name -> (N, H, W, C) uint8: digits (L), natural gray (L), natural RGB."""
  digits = load_digits().images[:6]
  digits = np.round(digits * 255 / 16).astype(np.uint8)
  gray = [skimage.data.camera(), skimage.data.moon(), skimage.data.coins()]
  rgb = [skimage.data.astronaut(), skimage.data.chelsea(),
         skimage.data.coffee()]
  return {
      "digits_32x32_L": np.stack([_resize(d, "L", 32, 32) for d in digits]),
      "natural_48x64_L": np.stack([_resize(g, "L", 64, 48) for g in gray]),
      "natural_64x64_RGB": np.stack([_resize(c, "RGB", 64, 64) for c in rgb]),
  }


def to_pil(image):
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def pil_array(pil_image, shape):
  return np.asarray(pil_image).reshape(shape)


def assert_close_to_pil(out, ref, max_frac, context):
  """At most ``max_frac`` of the pixels may differ by more than one level."""
  assert out.dtype == np.uint8 and out.shape == ref.shape, context
  diff = np.abs(out.astype(np.int32) - ref.astype(np.int32))
  frac = np.mean(diff > 1)
  assert frac <= max_frac, (
      f"{context}: {frac:.3%} of pixels differ from PIL by > 1 level "
      f"(allowed {max_frac:.1%}); max diff {diff.max()}, "
      f"{np.mean(diff > 0):.3%} differ at all")


# ----------------------------------------------------------------------------
# Single ops.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ra.OPS)
def test_op_matches_pil(name):
  batched = jax.jit(jax.vmap(
      lambda image, level, sign: ra.apply_op(image, name, level, sign, FILL)))
  for set_name, images in image_sets().items():
    images = _with_low_contrast(images)
    grid = [(i, level, sign) for i in range(len(images)) for level in LEVELS
            for sign in (1.0, -1.0)]
    index, levels, signs = (np.array(v) for v in zip(*grid))
    out = np.asarray(batched(images[index], levels.astype(np.float32),
                             signs.astype(np.float32)))
    for k, (i, level, sign) in enumerate(grid):
      ref = pil_array(pil_op(to_pil(images[i]), name, level, sign),
                      images[i].shape)
      assert_close_to_pil(
          out[k], ref, 0.02 if name in GEOMETRIC else 0.01,
          f"{name} on {set_name}[{i}], level={level}, sign={sign}")


def test_explicit_op_arguments_match_pil_exactly():
  """With the op argument given (not derived from a float32 level), the
  geometric, LUT and blend ops reproduce PIL bit for bit."""
  images = image_sets()["natural_64x64_RGB"]
  fill = (10, 200, 30)
  cases = [
      (lambda x: ra.rotate(x, 13.0, fill),
       lambda p: p.rotate(13.0, Image.NEAREST, fillcolor=fill)),
      (lambda x: ra.translate_y(x, -7.3, fill),
       lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 0, 0, 1, -7.3),
                             Image.NEAREST, fillcolor=fill)),
      (lambda x: ra.solarize(x, 100),
       lambda p: ImageOps.solarize(p, 100)),
      (lambda x: ra.posterize(x, 2),
       lambda p: ImageOps.posterize(p, 2)),
      (lambda x: ra.color(x, 1.77),
       lambda p: ImageEnhance.Color(p).enhance(1.77)),
      (lambda x: ra.contrast(x, 2.5),
       lambda p: ImageEnhance.Contrast(p).enhance(2.5)),
      (lambda x: ra.brightness(x, 0.37),
       lambda p: ImageEnhance.Brightness(p).enhance(0.37)),
      (lambda x: ra.sharpness(x, -1.0),
       lambda p: ImageEnhance.Sharpness(p).enhance(-1.0)),
  ]
  for k, (ours, theirs) in enumerate(cases):
    out = np.asarray(jax.jit(jax.vmap(ours))(images))
    for i, image in enumerate(images):
      ref = pil_array(theirs(to_pil(image)), image.shape)
      np.testing.assert_array_equal(out[i], ref, f"case {k}, image {i}")


# ----------------------------------------------------------------------------
# RandAugment.
# ----------------------------------------------------------------------------

CONFIG = dict(num_ops=2, magnitude=15, random_magnitude=True)


@functools.cache
def jitted_batch():
  return jax.jit(functools.partial(ra.randaugment_batch, **CONFIG))


def test_randaugment_batch_jit_shape_dtype_and_keys():
  for images in image_sets().values():
    out = jitted_batch()(jax.random.key(0), images)
    assert out.dtype == jnp.uint8 and out.shape == images.shape
    again = jitted_batch()(jax.random.key(0), images)
    other = jitted_batch()(jax.random.key(1), images)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)


def test_randaugment_matches_pil_composition():
  images = image_sets()["natural_64x64_RGB"]
  for seed in range(8):
    key = jax.random.key(seed)
    out = np.asarray(jitted_batch()(key, images))
    for i, example_key in enumerate(jax.random.split(key, len(images))):
      indices, levels, signs = ra.sample_ops(example_key, **CONFIG)
      ref = to_pil(images[i])
      for index, level, sign in zip(indices, levels, signs):
        ref = pil_op(ref, ra.OPS[int(index)], float(level), float(sign))
      assert_close_to_pil(out[i], pil_array(ref, images[i].shape), 0.02,
                          f"seed {seed}, example {i}")


def test_sequential_matches_vmap():
  images = image_sets()["natural_64x64_RGB"]
  sequential = jax.jit(functools.partial(
      ra.randaugment_batch, sequential=True, **CONFIG))
  key = jax.random.key(5)
  np.testing.assert_array_equal(sequential(key, images),
                                jitted_batch()(key, images))


def test_single_image_jit_and_fill():
  image = image_sets()["natural_64x64_RGB"][0]
  fill = np.array([7, 8, 9], np.uint8)
  augment = jax.jit(functools.partial(
      ra.randaugment, num_ops=1, magnitude=30, ops=("translate_x",),
      fill=fill))
  out = np.asarray(augment(jax.random.key(3), image))
  assert out.dtype == np.uint8 and out.shape == image.shape
  # A shift by 0.45 * 64 = 28.8 pixels fills 29 columns on one side.
  assert np.all(out[:, :29] == fill) or np.all(out[:, -29:] == fill)


def test_identity_at_magnitude_zero():
  images = image_sets()["digits_32x32_L"]
  out = ra.randaugment_batch(jax.random.key(0), images, num_ops=3,
                             magnitude=0, ops=("identity",))
  np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("ops", [("rotate", "blur"), ("Rotate",)])
def test_unknown_op_raises(ops):
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=f"{ops[-1]!r}.*valid ops: identity"):
    ra.randaugment(jax.random.key(0), image, ops=ops)


@pytest.mark.parametrize("magnitude", [-1, 30.5, 100])
def test_magnitude_out_of_range_raises(magnitude):
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="magnitude"):
    ra.randaugment(jax.random.key(0), image, magnitude=magnitude)


def test_bad_image_raises():
  with pytest.raises(ValueError, match="uint8"):
    ra.randaugment(jax.random.key(0), np.zeros((8, 8, 3), np.float32))
