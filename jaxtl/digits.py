"""TFDS builder `digits`: the bundled offline default dataset.

UCI optical digits (1797 grayscale 8x8 images, 10 classes) from
scikit-learn's bundled copy, pixel values 0..16 rescaled to uint8 0..255, with
a fixed stratified split (20% test, seed 0). Prepared once, without network
or TensorFlow, into array_record files under `data_dir`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Fixed stratified train/test indices (sorted) into the 1797 examples."""
  from sklearn.model_selection import train_test_split
  train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                 random_state=SPLIT_SEED, stratify=labels)
  return {'train': np.sort(train), 'test': np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI optical recognition of handwritten digits, 8x8x1 uint8."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 80/20 split of sklearn.datasets.load_digits, seed 0.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Tensor, not Image: PNG encoding in TFDS needs TensorFlow.
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is bundled with scikit-learn.
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    return {split: self._generate_examples(images[idx], labels[idx], idx)
            for split, idx in split_indices(labels).items()}

  def _generate_examples(self, images, labels, ids):
    for image, label, i in zip(images, labels, ids):
      yield int(i), {'image': image, 'label': int(label)}
