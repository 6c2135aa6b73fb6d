"""RandAugment (Cubuk et al., 2020) in JAX, matching PIL op for op.

This is the input noise of Noisy Student training. Conventions:

* Images are ``uint8`` arrays of shape ``(H, W, C)`` with ``C`` 1 (PIL mode
  "L") or 3 (mode "RGB"); every op returns ``uint8`` of the same shape. All
  functions are pure and work under ``jit`` and ``vmap``; op parameters
  (angles, factors, ...) may be traced values.
* Each op reproduces its PIL definition (Pillow's C code, including integer
  rounding, 16.16 fixed-point nearest resampling and border handling).
  Given the same op argument, the LUT, blend, shear and translate ops are
  bit-exact and ``rotate`` differs only on the rare pixels where float32
  ``cos``/``sin`` round to another fixed-point value. Known one-level
  differences: ``autocontrast`` uses exact integer arithmetic where PIL's
  float64 scale sometimes lands one level low (PIL can map the brightest
  value to 254), and a blend factor derived from a level in float32 may
  differ from PIL's (double -> float) factor in the last bit, which flips
  the rounding of pixels whose blend is an exact integer.
* Magnitude uses the 0-30 scale of the Noisy Student paper: an op at level
  ``l`` gets strength ``s = l / 30`` of its maximum; signed ops get a random
  direction ``±``. Level -> op argument (the TF / timm RandAugment
  mappings):

  - rotate: ``degrees = ±30 s``
  - shear_x, shear_y: ``factor = ±0.3 s``
  - translate_x, translate_y: ``pixels = ±0.45 s * W`` (``H`` for ``_y``)
  - color, contrast, brightness, sharpness: ``factor = 1 ± 0.9 s``
  - posterize: ``bits = 8 - floor(4 s)`` (8 = unchanged, 4 at s = 1)
  - solarize: ``threshold = 256 - 256 s`` (256 = unchanged)
  - identity, autocontrast, equalize: no argument

* Geometric ops use nearest resampling (``Image.NEAREST``) and fill
  uncovered pixels with ``fill``: a scalar or a per-channel ``(C,)`` value,
  128 (gray) by default as in TF's RandAugment.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

ArrayLike = jax.typing.ArrayLike

OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color",
       "posterize", "contrast", "brightness", "sharpness", "shear_x",
       "shear_y", "translate_x", "translate_y")

MAX_LEVEL = 30.0
MAX_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45  # Fraction of the image width (height).
MAX_ENHANCE = 0.9  # Enhance factors lie in [1 - 0.9, 1 + 0.9].


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
  """Maps ``(H, W, C)`` uint8 through a per-channel ``(C, 256)`` table."""
  channels = jnp.arange(image.shape[-1])
  return lut[channels, image.astype(jnp.int32)].astype(jnp.uint8)


def _histogram(image: jax.Array) -> jax.Array:
  """Per-channel histogram of ``(H, W, C)`` uint8: ``(C, 256)`` int32."""
  channels = image.shape[-1]
  bins = image.astype(jnp.int32) + 256 * jnp.arange(channels)
  return jnp.bincount(bins.reshape(-1), length=256 * channels).reshape(
      channels, 256)


def _luma(image: jax.Array) -> jax.Array:
  """PIL's RGB -> "L" conversion, ``(H, W, 3)`` uint8 -> ``(H, W)`` int32."""
  rgb = image.astype(jnp.int32)
  return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 +
          0x8000) >> 16


def _gray(image: jax.Array) -> jax.Array:
  """The "L" image of ``(H, W, C)`` uint8 as ``(H, W)`` int32."""
  if image.shape[-1] == 1:
    return image[..., 0].astype(jnp.int32)
  return _luma(image)


def _blend(degenerate: jax.Array, image: jax.Array, factor: ArrayLike):
  """``Image.blend(degenerate, image, factor)``: float32 lerp, clip, floor.

  Args:
    degenerate: int or uint8 array broadcastable to ``image``.
    image: ``(H, W, C)`` uint8.
    factor: scalar; 0 gives ``degenerate``, 1 gives ``image``.

  Returns:
    ``(H, W, C)`` uint8.
  """
  factor = jnp.asarray(factor, jnp.float32)
  low = degenerate.astype(jnp.float32)
  out = low + factor * (image.astype(jnp.float32) - low)
  return jnp.floor(jnp.clip(out, 0.0, 255.0)).astype(jnp.uint8)


def _fix(value: ArrayLike) -> jax.Array:
  """PIL's 16.16 fixed point ``floor(value * 2**16 + 0.5)`` as int32."""
  value = jnp.asarray(value, jnp.float32)
  whole = jnp.floor(value)
  frac = jnp.floor((value - whole) * 65536.0 + 0.5)
  return whole.astype(jnp.int32) * 65536 + frac.astype(jnp.int32)


def _affine(image: jax.Array, matrix: Sequence[ArrayLike],
            fill: ArrayLike) -> jax.Array:
  """``Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=fill)``.

  Output pixel ``(x, y)`` samples the input at ``(a x' + b y' + c,
  d x' + e y' + f)`` with ``x' = x + 0.5``, ``y' = y + 0.5`` and
  ``matrix = (a, b, c, d, e, f)``, evaluated in PIL's 16.16 fixed point and
  rounded down.

  Args:
    image: ``(H, W, C)`` uint8.
    matrix: six scalars (floats or traced).
    fill: scalar or ``(C,)`` value for pixels sampled outside the input.

  Returns:
    ``(H, W, C)`` uint8.
  """
  a, b, c, d, e, f = (jnp.asarray(v, jnp.float32) for v in matrix)
  height, width = image.shape[:2]
  y = jnp.arange(height, dtype=jnp.int32)[:, None]
  x = jnp.arange(width, dtype=jnp.int32)[None, :]
  src_x = (_fix(c + 0.5 * a + 0.5 * b) + y * _fix(b) + x * _fix(a)) >> 16
  src_y = (_fix(f + 0.5 * d + 0.5 * e) + y * _fix(e) + x * _fix(d)) >> 16
  inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
  sampled = image[jnp.clip(src_y, 0, height - 1), jnp.clip(src_x, 0, width - 1)]
  fill = jnp.broadcast_to(jnp.asarray(fill, jnp.uint8), image.shape[-1:])
  return jnp.where(inside[..., None], sampled, fill)


# ----------------------------------------------------------------------------
# Ops with explicit arguments. All map (H, W, C) uint8 -> (H, W, C) uint8.
# ----------------------------------------------------------------------------


def identity(image: jax.Array) -> jax.Array:
  """Returns ``image`` unchanged."""
  return image


def autocontrast(image: jax.Array) -> jax.Array:
  """``ImageOps.autocontrast``: stretches each channel to [0, 255].

  Values map to ``floor((v - lo) * 255 / (hi - lo))`` with ``lo``/``hi`` the
  channel's min/max; constant channels are unchanged. The quotient has
  denominator ``<= 255``, so it is an integer or at least 1/255 above one:
  the 1e-3 nudge makes the float32 floor exact.
  """
  lo = jnp.min(image, axis=(0, 1)).astype(jnp.float32)
  hi = jnp.max(image, axis=(0, 1)).astype(jnp.float32)
  pixels = image.astype(jnp.float32)
  scaled = jnp.floor((pixels - lo) * 255.0 / jnp.maximum(hi - lo, 1.0) + 1e-3)
  return jnp.where(hi > lo, scaled, pixels).astype(jnp.uint8)


def equalize(image: jax.Array) -> jax.Array:
  """``ImageOps.equalize``: per-channel histogram equalization.

  With ``step = (count - count of the top value) // 255``, value ``v`` maps
  to ``(step // 2 + count of values below v) // step``; channels with
  ``step == 0`` are unchanged.
  """
  hist = _histogram(image)
  values = jnp.arange(256, dtype=jnp.int32)
  last = jnp.max(jnp.where(hist > 0, values, 0), axis=1, keepdims=True)
  last_count = jnp.take_along_axis(hist, last, axis=1)
  step = (jnp.sum(hist, axis=1, keepdims=True) - last_count) // 255
  below = jnp.cumsum(hist, axis=1) - hist
  lut = (step // 2 + below) // jnp.maximum(step, 1)
  lut = jnp.where(step > 0, jnp.clip(lut, 0, 255), values)
  return _apply_lut(image, lut)


def rotate(image: jax.Array, degrees: ArrayLike,
           fill: ArrayLike = 128) -> jax.Array:
  """``image.rotate(degrees, NEAREST, fillcolor=fill)``: counter-clockwise.

  Rotates about the image center ``(W / 2, H / 2)``.
  """
  height, width = image.shape[:2]
  center_x, center_y = width / 2, height / 2
  theta = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  matrix = (cos, sin, center_x - cos * center_x - sin * center_y,
            -sin, cos, center_y + sin * center_x - cos * center_y)
  return _affine(image, matrix, fill)


def shear_x(image: jax.Array, factor: ArrayLike,
            fill: ArrayLike = 128) -> jax.Array:
  """Affine ``(1, factor, 0, 0, 1, 0)``: samples ``x + factor * y``."""
  return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image: jax.Array, factor: ArrayLike,
            fill: ArrayLike = 128) -> jax.Array:
  """Affine ``(1, 0, 0, factor, 1, 0)``: samples ``y + factor * x``."""
  return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x(image: jax.Array, pixels: ArrayLike,
                fill: ArrayLike = 128) -> jax.Array:
  """Affine ``(1, 0, pixels, 0, 1, 0)``: content moves left by ``pixels``."""
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image: jax.Array, pixels: ArrayLike,
                fill: ArrayLike = 128) -> jax.Array:
  """Affine ``(1, 0, 0, 0, 1, pixels)``: content moves up by ``pixels``."""
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


def solarize(image: jax.Array, threshold: ArrayLike) -> jax.Array:
  """``ImageOps.solarize``: inverts values ``>= threshold``."""
  return jnp.where(image < threshold, image, 255 - image).astype(jnp.uint8)


def posterize(image: jax.Array, bits: ArrayLike) -> jax.Array:
  """``ImageOps.posterize``: keeps the ``bits`` (1..8) high bits."""
  drop = 8 - jnp.asarray(bits, jnp.int32)
  return ((image.astype(jnp.int32) >> drop) << drop).astype(jnp.uint8)


def color(image: jax.Array, factor: ArrayLike) -> jax.Array:
  """``ImageEnhance.Color``: blends with the gray image (no-op for C = 1)."""
  return _blend(_gray(image)[..., None], image, factor)


def contrast(image: jax.Array, factor: ArrayLike) -> jax.Array:
  """``ImageEnhance.Contrast``: blends with the rounded mean gray level."""
  total = jnp.sum(_gray(image))
  count = image.shape[0] * image.shape[1]
  mean = (2 * total + count) // (2 * count)
  return _blend(mean, image, factor)


def brightness(image: jax.Array, factor: ArrayLike) -> jax.Array:
  """``ImageEnhance.Brightness``: blends with black."""
  return _blend(jnp.zeros((), jnp.int32), image, factor)


def sharpness(image: jax.Array, factor: ArrayLike) -> jax.Array:
  """``ImageEnhance.Sharpness``: blends with ``ImageFilter.SMOOTH``.

  SMOOTH is the 3x3 kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` rounded
  to nearest (a sum over 13 is never a tie); PIL keeps the one-pixel border
  of the original.
  """
  pixels = image.astype(jnp.int32)
  height, width = image.shape[:2]
  padded = jnp.pad(pixels, ((1, 1), (1, 1), (0, 0)))
  window = sum(padded[dy:dy + height, dx:dx + width]
               for dy in range(3) for dx in range(3))
  smooth = (2 * (window + 4 * pixels) + 13) // 26
  row = jnp.arange(height)[:, None, None]
  col = jnp.arange(width)[None, :, None]
  border = (row == 0) | (row == height - 1) | (col == 0) | (col == width - 1)
  return _blend(jnp.where(border, pixels, smooth), image, factor)


# ----------------------------------------------------------------------------
# Level -> op argument, and RandAugment.
# ----------------------------------------------------------------------------


def _enhance(op):
  return lambda image, s, sign, fill: op(image, 1.0 + sign * s * MAX_ENHANCE)


def _translate(op, axis):
  return lambda image, s, sign, fill: op(
      image, sign * s * MAX_TRANSLATE * image.shape[axis], fill)


# (image, strength s = level / MAX_LEVEL, sign, fill) -> image.
_LEVEL_OPS = {
    "identity": lambda image, s, sign, fill: identity(image),
    "autocontrast": lambda image, s, sign, fill: autocontrast(image),
    "equalize": lambda image, s, sign, fill: equalize(image),
    "rotate": lambda image, s, sign, fill: rotate(
        image, sign * s * MAX_DEGREES, fill),
    "solarize": lambda image, s, sign, fill: solarize(image, 256.0 - s * 256),
    "color": _enhance(color),
    "posterize": lambda image, s, sign, fill: posterize(
        image, 8 - jnp.floor(s * 4).astype(jnp.int32)),
    "contrast": _enhance(contrast),
    "brightness": _enhance(brightness),
    "sharpness": _enhance(sharpness),
    "shear_x": lambda image, s, sign, fill: shear_x(
        image, sign * s * MAX_SHEAR, fill),
    "shear_y": lambda image, s, sign, fill: shear_y(
        image, sign * s * MAX_SHEAR, fill),
    "translate_x": _translate(translate_x, axis=1),
    "translate_y": _translate(translate_y, axis=0),
}
assert tuple(_LEVEL_OPS) == OPS


def _check_ops(ops: Sequence[str]) -> tuple[str, ...]:
  """Returns ``ops`` as a tuple; raises ValueError on unknown or no names."""
  if isinstance(ops, str):
    raise ValueError(f"ops must be a sequence of op names, got {ops!r}.")
  ops = tuple(ops)
  if not ops:
    raise ValueError("ops must name at least one op.")
  for name in ops:
    if name not in _LEVEL_OPS:
      raise ValueError(
          f"Unknown RandAugment op {name!r}; valid ops: {', '.join(OPS)}.")
  return ops


def _check_magnitude(magnitude: ArrayLike) -> None:
  """Raises ValueError unless a concrete ``magnitude`` lies in [0, 30]."""
  if jnp.ndim(magnitude) != 0:
    raise ValueError(
        f"magnitude must be a scalar, got shape {jnp.shape(magnitude)}.")
  if isinstance(magnitude, jax.core.Tracer):
    return
  if not 0.0 <= float(magnitude) <= MAX_LEVEL:
    raise ValueError(
        f"magnitude must be in [0, {MAX_LEVEL:g}], got {magnitude!r}.")


def _check_image(image: jax.Array) -> None:
  """Raises ValueError unless ``image`` is uint8 ``(H, W, C)``, C in (1, 3)."""
  if (image.dtype != jnp.uint8 or image.ndim != 3 or
      image.shape[-1] not in (1, 3)):
    raise ValueError("image must be uint8 of shape (H, W, C) with C in "
                     f"(1, 3), got {image.dtype} {image.shape}.")


def apply_op(image: ArrayLike, op_name: str, level: ArrayLike,
             sign: ArrayLike = 1.0, fill: ArrayLike = 128) -> jax.Array:
  """Applies one op at a RandAugment level.

  Args:
    image: ``(H, W, C)`` uint8.
    op_name: one of ``OPS`` (static).
    level: scalar in [0, 30]; strength ``level / 30`` of the op's maximum
      (see the module docstring).
    sign: +1 or -1, the direction of signed ops (ignored by the others).
    fill: fill value of geometric ops, scalar or ``(C,)``.

  Returns:
    ``(H, W, C)`` uint8.
  """
  (op_name,) = _check_ops((op_name,))
  image = jnp.asarray(image)
  _check_image(image)
  strength = jnp.asarray(level, jnp.float32) / MAX_LEVEL
  sign = jnp.asarray(sign, jnp.float32)
  return _LEVEL_OPS[op_name](image, strength, sign, fill)


def sample_ops(key: jax.Array, *, num_ops: int = 2,
               magnitude: ArrayLike = 10.0, random_magnitude: bool = False,
               ops: Sequence[str] = OPS
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws the RandAugment policy for one image.

  Args:
    key: PRNG key.
    num_ops: number of ops applied in sequence (static).
    magnitude: level in [0, 30] of every op, or the maximum level when
      ``random_magnitude``.
    random_magnitude: draw each op's level uniformly from [0, magnitude].
    ops: candidate op names (static); ops are drawn uniformly with
      replacement.

  Returns:
    ``(indices, levels, signs)``, each of shape ``(num_ops,)``: int32
    indices into ``ops``, float32 levels and float32 signs (+1 or -1).
  """
  ops = _check_ops(ops)
  _check_magnitude(magnitude)
  op_key, level_key, sign_key = jax.random.split(key, 3)
  indices = jax.random.randint(op_key, (num_ops,), 0, len(ops))
  levels = jnp.full((num_ops,), magnitude, jnp.float32)
  if random_magnitude:
    levels = levels * jax.random.uniform(level_key, (num_ops,))
  signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (num_ops,)), 1.0, -1.0)
  return indices, levels, signs


def randaugment(key: jax.Array, image: ArrayLike, *, num_ops: int = 2,
                magnitude: ArrayLike = 10.0, random_magnitude: bool = False,
                ops: Sequence[str] = OPS, fill: ArrayLike = 128) -> jax.Array:
  """Applies ``num_ops`` random ops (drawn by ``sample_ops``) to one image.

  The op is chosen with ``jax.lax.switch``, so this jits with static
  ``num_ops``, ``random_magnitude`` and ``ops``. ``magnitude`` is validated
  (ValueError outside [0, 30]) unless traced.

  Args:
    key: PRNG key.
    image: ``(H, W, C)`` uint8, ``C`` in (1, 3).
    num_ops, magnitude, random_magnitude, ops: see ``sample_ops``.
    fill: fill value of geometric ops, scalar or ``(C,)``.

  Returns:
    ``(H, W, C)`` uint8.
  """
  ops = _check_ops(ops)
  image = jnp.asarray(image)
  _check_image(image)
  indices, levels, signs = sample_ops(
      key, num_ops=num_ops, magnitude=magnitude,
      random_magnitude=random_magnitude, ops=ops)
  branches = [functools.partial(_LEVEL_OPS[name], fill=fill) for name in ops]

  def step(image, policy):
    index, level, sign = policy
    return jax.lax.switch(index, branches, image, level / MAX_LEVEL, sign), None

  image, _ = jax.lax.scan(step, image, (indices, levels, signs))
  return image


def randaugment_batch(key: jax.Array, images: ArrayLike, *,
                      sequential: bool = False, **kwargs) -> jax.Array:
  """``randaugment`` over a leading batch axis with per-example keys.

  Example ``i`` is augmented with key ``jax.random.split(key, B)[i]``.

  Args:
    key: PRNG key, split into ``B`` keys.
    images: ``(B, H, W, C)`` uint8.
    sequential: loop over the examples with ``lax.map`` instead of ``vmap``
      (static). Under ``vmap`` the ``lax.switch`` evaluates every op for
      every example and selects; the loop runs only the chosen ops, one
      example at a time. Same result; on CPU the loop is far faster (see
      ``benchmarks/RESULTS_randaugment.txt``).
    **kwargs: keyword arguments of ``randaugment``.

  Returns:
    ``(B, H, W, C)`` uint8.
  """
  images = jnp.asarray(images)
  keys = jax.random.split(key, images.shape[0])
  augment = functools.partial(randaugment, **kwargs)
  if sequential:
    return jax.lax.map(lambda args: augment(*args), (keys, images))
  return jax.vmap(augment)(keys, images)
