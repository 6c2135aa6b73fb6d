"""Transfer on the bundled digits: pretrain on digits 0-4, transfer to 5-9 with k labels per class.

Runs every method of `methods` and prints one table (test accuracy on digits
5-9, mean +- std over `seeds`); the per-method configs run one method each.

python experiments/transfer.py --config=experiments/configs/transfer_base.py --workdir=workdirs/transfer
"""

from jaxtl.config import base_config, lock


def get_config():
  c = base_config()
  c.seeds = (0, 1, 2)
  c.methods = ('scratch', 'linear_probe', 'finetune')
  c.source_classes = (0, 1, 2, 3, 4)   # Pretraining task: all their train images, labeled.
  c.target_classes = (5, 6, 7, 8, 9)   # Transfer task, relabelled 0..4.
  c.shots = (10,)                      # k labeled train images per target class; one column each.
  c.pretrained = ''                    # A jaxtl workdir / .safetensors / .pth; '' = pretrain here.
  c.pretrain = dict(num_epochs=30, learning_rate=0.05, batch_size=64)
  c.model.name = 'cnn'
  c.model.kwargs = dict(width=1.0, depth=2, stages=2, base_channels=16)
  c.batch_size = 16
  c.cache_features = True              # Head-only training without augmentation: features computed once.
  # Epochs are max(1, N // batch_size) steps over the N = k * classes labeled images.
  c.scratch = dict(num_epochs=100, learning_rate=0.05)
  c.linear_probe = dict(num_epochs=100, learning_rate=0.05)
  c.finetune = dict(
      num_epochs=100, learning_rate=0.05,
      backbone_lr=0.1,                 # Discriminative lr: backbone multiplier (head 1x).
      layer_decay=1.0,                 # < 1: layer-wise lr decay, layer i of 0..depth gets decay^(depth - i).
      unfreeze_every=0)                # > 0: gradual unfreezing, one more stage every this many epochs.
  c.log_every = 50
  c.checkpoint_every = 1000
  return lock(c)
