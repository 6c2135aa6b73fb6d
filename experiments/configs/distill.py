"""Knowledge distillation on the bundled digits dataset: few labels + teacher soft targets.

10% of the train split labeled (stratified, per seed). A CNN teacher is trained
on the labeled set; the same MLP student is then trained on the labeled set
with cross entropy only, and with distillation (KD + CE on the labeled batch,
pure T^2 KL on the teacher's soft targets for the unlabeled rest) for every
(temperature, alpha) in `distill.settings`, under the same seeds.

python experiments/distill.py --config=experiments/configs/distill.py --workdir=workdirs/distill
All labels (standard KD): add --config.labeled.fraction=1.0
"""

from jaxtl.config import base_config, lock


def get_config():
  c = base_config()
  c.seeds = (0, 1, 2)
  c.labeled = dict(fraction=0.1, per_class=0)   # per_class > 0 overrides fraction; 1.0 = all labeled.
  # Teacher(s): `model`, trained on the labeled set per seed, or loaded from jaxtl checkpoints.
  c.model.name = 'cnn'
  c.model.kwargs = dict(width=2.0, depth=2, stages=2, base_channels=16)
  c.teacher = dict(
      num=1,                   # Teachers trained per seed (init seeds differ); > 1 = ensemble.
      checkpoints=(),          # jaxtl workdirs of trained `model`s: loaded instead of trained.
      steps=200)
  # Student: any registry model, the same for CE only and KD.
  c.student = dict(model='mlp', kwargs=dict(hidden=(128, 128)), dropout=0.0, steps=200)
  c.distill = dict(
      mode='cached',           # 'cached' teacher logits, or 'online' teacher in the step.
      settings=((1.0, 0.5), (4.0, 0.5), (4.0, 0.9)),   # (temperature, alpha) of each KD student.
      unlabeled_ratio=3)       # Unlabeled batch = ratio x batch_size (when any is unlabeled).
  c.batch_size = 32
  c.optimizer.learning_rate = 0.05
  c.optimizer.warmup_steps = 20
  c.log_every = 50
  c.checkpoint_every = 1000
  return lock(c)
