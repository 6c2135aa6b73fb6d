"""Input pipelines: TFDS data sources (array_record, no TensorFlow) through grain.

Every dataset, the bundled `digits` or any TFDS name, arrives as a random-access
source of records `{'image': uint8 (H, W, C), 'label': int, ...}`. Training reads
it through a seeded, per-epoch-reshuffled, host-sharded grain pipeline whose
iterator state goes into checkpoints, so a resumed run sees exactly the batches
an uninterrupted run would have seen. Images stay uint8 on the host; the
jitted step converts (and augments) them on device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]


def default_data_dir() -> str:
  """$JAXTL_DATA_DIR, else $XDG_CACHE_HOME/jaxtl/tensorflow_datasets (~/.cache/...)."""
  if os.environ.get('JAXTL_DATA_DIR'):
    return os.environ['JAXTL_DATA_DIR']
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'jaxtl', 'tensorflow_datasets')


class ArraySource(Sequence[Record]):
  """In-memory random-access source over equally long numpy arrays.

  `ArraySource(image=x, label=y)` with x uint8 (N, H, W, C) and y int (N,).
  Build research pipelines from numpy data exactly as from TFDS.
  """

  def __init__(self, **fields: np.ndarray):
    if not fields:
      raise ValueError('ArraySource needs at least one field.')
    self.fields = {k: np.asarray(v) for k, v in fields.items()}
    lengths = {k: len(v) for k, v in self.fields.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'ArraySource fields have different lengths: {lengths}')
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.fields.items()}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Records `indices` (int (B,)) as a batch {key: (B, ...)}: one fancy index per field."""
    return {k: v[indices] for k, v in self.fields.items()}


def gather(source: Sequence[Record], indices: np.ndarray) -> dict[str, np.ndarray]:
  """Records `indices` of `source` as one batch {key: (B, ...)}.

  Uses the source's own `gather` (in-memory sources: one fancy index per
  field), else its batched `__getitems__` (TFDS array_record sources), else
  one `__getitem__` per record.
  """
  indices = np.asarray(indices, np.int64)
  if hasattr(source, 'gather'):
    return source.gather(indices)
  if len(indices) == 0:
    raise ValueError(f'No records to gather from {type(source).__name__} (no indices given).')
  if hasattr(source, '__getitems__'):
    records = source.__getitems__(indices.tolist())
  else:
    records = [source[int(i)] for i in indices]
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def load(name: str, split: str, *, data_dir: str | None = None,
         in_memory: bool = False) -> tuple[Sequence[Record], DatasetInfo]:
  """Random-access source and info for TFDS dataset `name` / `split`.

  'digits' is prepared offline on first use. Other names must already be
  prepared in array_record format under `data_dir`; otherwise the error says
  how to prepare them. `in_memory`: decode every record once into an
  `ArraySource` (no per-epoch decoding; for splits that fit in host memory
  and have fixed-shape features), else read and decode records on demand.
  """
  import tensorflow_datasets as tfds
  tfds.display_progress_bar(False)
  data_dir = data_dir or default_data_dir()
  if name == 'digits':
    from jaxtl.digits import Digits
    builder = Digits(data_dir=data_dir, file_format='array_record')
    if not builder.is_prepared():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      import difflib
      close = difflib.get_close_matches(
          name, tfds.list_builders(with_community_datasets=False) + ['digits'], n=3)
      raise ValueError(f'Unknown TFDS dataset {name!r}. Close names: {close}. See '
                       'https://www.tensorflow.org/datasets/catalog/overview') from None
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS dataset {name!r} is not prepared in {data_dir}. Prepare it once (needs network):\n'
          f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
          f"data_dir='{data_dir}', file_format='array_record').download_and_prepare()\"\n"
          'or point config.data_dir / $JAXTL_DATA_DIR at a directory holding it.')
  if split not in builder.info.splits:
    raise ValueError(f'Dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}')
  source = builder.as_data_source(split=split)
  features = builder.info.features
  info = DatasetInfo(name, int(features['label'].num_classes), tuple(features['image'].shape))
  if None in info.image_shape:
    info = dataclasses.replace(info, image_shape=tuple(np.shape(source[0]['image'])))
  if in_memory:
    source = ArraySource(**to_arrays(source, keys=tuple(features.keys())))
  return source, info


def to_arrays(source: Sequence[Record], keys: Sequence[str] = ('image', 'label')) -> dict[str, np.ndarray]:
  """Materialises `keys` of every record: {key: (N, ...)}. For small datasets."""
  batch = gather(source, np.arange(len(source)))
  return {k: batch[k] for k in keys}


def stratified_split(labels: np.ndarray, *, per_class: int | None = None,
                     fraction: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Seeded stratified labeled / unlabeled split of example indices.

  Keeps `per_class` examples of every class (or `fraction` of each class,
  at least one) as labeled; the rest is unlabeled. Returns two sorted int
  index arrays.
  """
  if (per_class is None) == (fraction is None):
    raise ValueError('Give exactly one of per_class or fraction.')
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  labeled = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    k = per_class if per_class is not None else max(1, int(round(fraction * len(idx))))
    if k > len(idx):
      raise ValueError(f'Class {c} has only {len(idx)} examples, cannot keep {k} labeled.')
    labeled.append(idx[:k])
  labeled = np.sort(np.concatenate(labeled))
  return labeled, np.setdiff1d(np.arange(len(labels)), labeled)


def split_labeled_unlabeled(arrays: Mapping[str, np.ndarray], labeled_idx, unlabeled_idx):
  """Labeled source (image, label) and unlabeled source (image, hidden_label).

  The unlabeled source keeps the true label only as `hidden_label`, for
  evaluation (e.g. pseudo-label accuracy); training code never reads it.
  """
  labeled = ArraySource(image=arrays['image'][labeled_idx], label=arrays['label'][labeled_idx])
  unlabeled = ArraySource(image=arrays['image'][unlabeled_idx],
                          hidden_label=arrays['label'][unlabeled_idx])
  return labeled, unlabeled


def check_labels(batch: Mapping[str, np.ndarray], num_classes: int) -> None:
  """Raises a ValueError naming the first label of `batch` outside [0, num_classes)."""
  labels = np.asarray(batch['label'])
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    raise ValueError(f'Label {int(labels[bad][0])} out of range [0, {num_classes}) in a batch '
                     f'with fields {sorted(batch)}')


_ENDLESS = 2**62  # Steps: no training run reaches it.


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_order(n: int, seed: int, start: int, stop: int) -> np.ndarray:
  """Positions [start, stop) of the training order: int64 indices into range(n).

  The order is the concatenation of epochs; epoch e visits every index once,
  in the permutation seeded by (seed, e). A batch may span two epochs (or
  several, when n is smaller than the batch).
  """
  epochs, offsets = np.divmod(np.arange(start, stop, dtype=np.int64), n)
  out = np.empty_like(offsets)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = _permutation(n, seed, int(e))[offsets[sel]]
  return out


def train_iterator(source: Sequence[Record], *, batch_size: int, seed: int,
                   num_classes: int | None = None, num_threads: int = 2,
                   prefetch: int = 8) -> grain.DatasetIterator:
  """Endless iterator of host-local batches {key: (batch_size / hosts, ...)}.

  Shuffles with `seed`, differently each epoch, and gives each host
  (`jax.process_index()`) its own slice of every global batch. The
  iterator's `get_state()` / `set_state()` resume it exactly.
  """
  if len(source) == 0:
    raise ValueError('The training dataset is empty.')
  hosts = jax.process_count()
  if batch_size % hosts:
    raise ValueError(f'batch_size {batch_size} is not divisible by the {hosts} hosts.')
  check = num_classes is not None and 'label' in source[0]
  local, start = batch_size // hosts, jax.process_index() * (batch_size // hosts)

  def read(step: int) -> dict[str, np.ndarray]:
    first = step * batch_size + start
    batch = gather(source, epoch_order(len(source), seed, first, first + local))
    if check:
      check_labels(batch, num_classes)
    return batch

  # Element `step` is global batch `step` of the endless stream of epochs: one
  # Python call and one batched read per batch (grain's per-record shuffle and
  # batching cost ~30 us per record, more than reading it).
  ds = grain.MapDataset.range(_ENDLESS).map(read)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


class ZipIterator:
  """Zips named iterators into dict batches; state is the dict of their states."""

  def __init__(self, **iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    return {k: next(it) for k, it in self.iterators.items()}

  def get_state(self):
    return {k: it.get_state() for k, it in self.iterators.items()}

  def set_state(self, state):
    for k, it in self.iterators.items():
      it.set_state(state[k])


def eval_batches(source: Sequence[Record], *, batch_size: int,
                 keys: Sequence[str] = ('image', 'label')) -> Iterator[dict[str, np.ndarray]]:
  """In-order host-local batches padded to `batch_size`, with a bool `mask` field.

  Each host reads its own contiguous share of every batch.
  """
  if len(source) == 0:
    raise ValueError('The evaluation dataset is empty.')
  hosts, host = jax.process_count(), jax.process_index()
  local = batch_size // hosts
  for start in range(0, len(source), batch_size):
    idx = np.arange(start + host * local, start + (host + 1) * local)
    mask = idx < len(source)
    records = gather(source, idx[mask])
    batch = {k: records[k] for k in keys}
    pad = local - int(mask.sum())
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    batch['mask'] = mask
    yield batch


class TimedIterator:
  """Wraps a checkpointable iterator and accumulates the seconds spent in `next`."""

  def __init__(self, iterator):
    self.iterator, self.seconds = iterator, 0.0

  def __iter__(self):
    return self

  def __next__(self):
    import time
    start = time.perf_counter()
    try:
      return next(self.iterator)
    finally:
      self.seconds += time.perf_counter() - start

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)
