import os

import jax
import numpy as np
import pytest

from jaxtl import data


@pytest.fixture(scope='module')
def digits():
  train, info = data.load('digits', 'train')
  test, _ = data.load('digits', 'test')
  return train, test, info


def test_digits_builder_split_and_reuse(digits, data_dir):
  train, test, info = digits
  assert (len(train), len(test)) == (1437, 360)
  assert info.num_classes == 10 and info.image_shape == (8, 8, 1)
  tr, te = data.to_arrays(train), data.to_arrays(test)
  assert tr['image'].dtype == np.uint8 and tr['image'].max() == 255
  # Stratified: every class is ~20% test.
  frac = np.bincount(te['label'], minlength=10) / (np.bincount(te['label'], minlength=10) +
                                                   np.bincount(tr['label'], minlength=10))
  np.testing.assert_allclose(frac, 0.2, atol=0.01)
  # Train and test are disjoint images of the original 1797.
  from sklearn.datasets import load_digits
  assert len(tr['image']) + len(te['image']) == len(load_digits().images)
  files = sorted(os.listdir(os.path.join(data_dir, 'digits', '1.0.0')))
  mtimes = [os.path.getmtime(os.path.join(data_dir, 'digits', '1.0.0', f)) for f in files]
  data.load('digits', 'train')  # Second preparation reuses the files.
  assert mtimes == [os.path.getmtime(os.path.join(data_dir, 'digits', '1.0.0', f)) for f in files]


def test_in_memory_load_and_batched_reads_equal_record_reads(digits):
  train = digits[0]
  memory, _ = data.load('digits', 'train', in_memory=True)
  assert isinstance(memory, data.ArraySource) and len(memory) == len(train)
  idx = np.array([5, 0, 1436, 5])
  for source in (train, memory):
    batch = data.gather(source, idx)
    for j, i in enumerate(idx):
      np.testing.assert_array_equal(batch['image'][j], train[int(i)]['image'])
      assert batch['label'][j] == train[int(i)]['label']
  a = next(data.train_iterator(train, batch_size=32, seed=4, num_classes=10))
  b = next(data.train_iterator(memory, batch_size=32, seed=4, num_classes=10))
  for k in ('image', 'label'):
    np.testing.assert_array_equal(a[k], b[k])
  with pytest.raises(ValueError, match='No records to gather'):
    data.gather(train, np.array([], np.int64))


def test_unknown_and_unprepared_datasets_explain_themselves(tmp_path):
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset'"):
    data.load('no_such_dataset', 'train', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"(?s)'cifar10' is not prepared in .*download_and_prepare"):
    data.load('cifar10', 'train', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="no split 'validation'"):
    data.load('digits', 'validation')


def test_stratified_split_is_seeded_and_hides_labels(digits):
  arrays = data.to_arrays(digits[0])
  lab, unl = data.stratified_split(arrays['label'], per_class=5, seed=3)
  assert len(lab) == 50 and np.all(np.bincount(arrays['label'][lab]) == 5)
  assert len(np.intersect1d(lab, unl)) == 0 and len(lab) + len(unl) == len(arrays['label'])
  np.testing.assert_array_equal(lab, data.stratified_split(arrays['label'], per_class=5, seed=3)[0])
  assert not np.array_equal(lab, data.stratified_split(arrays['label'], per_class=5, seed=4)[0])
  lab_f, _ = data.stratified_split(arrays['label'], fraction=0.1, seed=0)
  assert abs(len(lab_f) - 144) <= 10
  labeled, unlabeled = data.split_labeled_unlabeled(arrays, lab, unl)
  assert set(unlabeled[0]) == {'image', 'hidden_label'} and set(labeled[0]) == {'image', 'label'}
  with pytest.raises(ValueError, match='exactly one'):
    data.stratified_split(arrays['label'])
  with pytest.raises(ValueError, match='cannot keep'):
    data.stratified_split(arrays['label'], per_class=1000)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_iterator_resumes_exactly_and_reshuffles_each_epoch():
  src = data.ArraySource(image=np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1),
                         label=np.arange(20) % 4)
  it = data.train_iterator(src, batch_size=4, seed=0, num_classes=4)
  first = _take(it, 3)
  state = it.get_state()
  rest = _take(it, 7)
  it2 = data.train_iterator(src, batch_size=4, seed=0, num_classes=4)
  it2.set_state(state)
  for a, b in zip(rest, _take(it2, 7)):
    np.testing.assert_array_equal(a['image'], b['image'])
  epoch1 = np.concatenate([b['label'] * 0 + b['image'].ravel() for b in (first + rest)[:5]])
  epoch2 = np.concatenate([b['image'].ravel() for b in (first + rest)[5:10]])
  assert sorted(epoch1) == sorted(epoch2) == list(range(20))  # Every example once per epoch.
  assert not np.array_equal(epoch1, epoch2)  # In a new order.


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match='empty'):
    data.train_iterator(data.ArraySource(image=np.zeros((0, 2, 2, 1)), label=np.zeros(0)),
                        batch_size=2, seed=0)
  bad = data.ArraySource(image=np.zeros((4, 2, 2, 1), np.uint8), label=np.array([0, 1, 7, 1]))
  with pytest.raises(ValueError, match=r'Label 7 out of range \[0, 3\)'):
    _take(data.train_iterator(bad, batch_size=4, seed=0, num_classes=3), 1)
  with pytest.raises(ValueError, match='different lengths'):
    data.ArraySource(image=np.zeros((3, 1)), label=np.zeros(2))


def test_eval_batches_pad_and_mask():
  src = data.ArraySource(image=np.arange(10).reshape(10, 1, 1, 1), label=np.arange(10))
  batches = list(data.eval_batches(src, batch_size=4))
  assert [b['mask'].sum() for b in batches] == [4, 4, 2]
  assert batches[-1]['image'].shape == (4, 1, 1, 1)
  got = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(got, np.arange(10))
  assert jax.process_count() == 1
