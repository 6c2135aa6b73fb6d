"""RandAugment with PIL, image by image: the definitions `jaxtl.randaugment` follows.

Written out from the PIL API (ImageOps / ImageEnhance / affine transforms),
independently of the JAX code, with the same level -> op argument mapping:
the tests compare every jitted op against `pil_op`, and
`benchmarks/randaugment.py` times `pil_randaugment_batch` as the CPU baseline.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from jaxtl import randaugment

_ENHANCE = {'color': ImageEnhance.Color, 'contrast': ImageEnhance.Contrast,
            'brightness': ImageEnhance.Brightness, 'sharpness': ImageEnhance.Sharpness}


def pil_op(image: Image.Image, name: str, level: float, sign: float, fill: int = 128) -> Image.Image:
  """Op `name` at `level` (0-30 scale) on an 'L' or 'RGB' PIL image; `sign` +-1 picks the direction."""
  m = level / 30
  width, height = image.size
  fillcolor = fill if image.mode == 'L' else (fill,) * 3

  def affine(matrix):
    return image.transform(image.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=fillcolor)

  if name == 'identity':
    return image
  if name == 'autocontrast':
    return ImageOps.autocontrast(image)
  if name == 'equalize':
    return ImageOps.equalize(image)
  if name == 'rotate':
    return image.rotate(sign * m * 30, Image.NEAREST, fillcolor=fillcolor)
  if name == 'solarize':
    return ImageOps.solarize(image, 256 - m * 256)
  if name == 'posterize':
    return ImageOps.posterize(image, 8 - int(m * 4))
  if name in _ENHANCE:
    return _ENHANCE[name](image).enhance(1 + sign * m * 0.9)
  if name == 'shear_x':
    return affine((1, sign * m * 0.3, 0, 0, 1, 0))
  if name == 'shear_y':
    return affine((1, 0, 0, sign * m * 0.3, 1, 0))
  if name == 'translate_x':
    return affine((1, 0, sign * m * 0.45 * width, 0, 1, 0))
  if name == 'translate_y':
    return affine((1, 0, 0, 0, 1, sign * m * 0.45 * height))
  raise ValueError(f'Unknown op {name!r}; valid ops: {list(randaugment.OPS)}')


def pil_randaugment_batch(images: np.ndarray, policy, fill: int = 128) -> np.ndarray:
  """uint8 (B, H, W, C) images, each through its ops of `policy`, in a Python loop.

  `policy` = per-example (op indices, levels, signs), each (B, num_ops), as
  `jax.vmap(randaugment.sample_ops)` draws them.
  """
  out = np.empty_like(images)
  for i, (indices, levels, signs) in enumerate(zip(*policy)):
    image = Image.fromarray(images[i][..., 0] if images.shape[-1] == 1 else images[i])
    for index, level, sign in zip(indices, levels, signs):
      image = pil_op(image, randaugment.OPS[int(index)], float(level), float(sign), fill)
    out[i] = np.asarray(image).reshape(images.shape[1:])
  return out
