"""Noisy Student on the bundled digits dataset: the main job.

10% of the train split labeled (stratified), the rest unlabeled; a supervised
CNN teacher, then 3 rounds of growing, noised students with hard pseudo-labels.

python experiments/noisy_student.py --config=experiments/configs/noisy_student.py --workdir=workdirs/noisy_student
"""

from jaxtl.config import base_config, lock


def get_config():
  c = base_config()
  c.seeds = (0,)
  c.labeled = dict(fraction=0.1, per_class=0)   # per_class > 0 overrides fraction.
  # Teacher (round 0): trained on the labeled set only.
  c.model.name = 'cnn'
  c.model.kwargs = dict(width=0.5, depth=2, stages=2, base_channels=32)
  c.model.dropout = 0.0
  c.augment.name = 'none'
  c.teacher_steps = 300
  c.teacher_checkpoint = ''              # A jaxtl workdir / .safetensors / .pth: skip training round 0.
  # Students (rounds 1..num_rounds): teacher kwargs overridden per round, plus noise.
  c.num_rounds = 3
  c.student = dict(
      model='',                          # '' = same family as the teacher.
      kwargs=({'width': 1.0}, {'width': 1.5}, {'width': 2.0}),
      growth='equal_or_larger',          # 'any' | 'equal_or_larger' | 'larger' (num params).
      dropout=0.5, drop_path=0.2,
      augment=dict(name='randaugment', num_ops=2, magnitude=10, random_magnitude=False, ops=()),
      init_from_teacher=False)
  c.student_steps = 500
  c.unlabeled_ratio = 3                  # Unlabeled batch = ratio x labeled batch; loss weight too.
  c.pseudo_label = dict(mode='hard', temperature=1.0, label_smoothing=0.1, threshold=0.3,
                        balance=True, per_class=0)
  c.batch_size = 32
  c.optimizer.learning_rate = 0.05
  c.optimizer.warmup_steps = 20
  c.ema_decay = 0.0
  c.log_every = 50
  c.checkpoint_every = 100
  return lock(c)
