"""Plain pseudo-labeling baseline: same as noisy_student.py but no noise, same-size students.

Measures what the noise (RandAugment, dropout, stochastic depth) and the growing
students add on top of pseudo-labels alone.
"""

from experiments.configs import noisy_student


def get_config():
  c = noisy_student.get_config()
  c.student.kwargs = ({}, {}, {})
  c.student.dropout = 0.0
  c.student.drop_path = 0.0
  c.student.augment.name = 'none'
  return c
