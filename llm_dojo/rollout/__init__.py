"""Rollouts for RL: generate.py samples completions, teacher.py scores them with a teacher model (distillation)."""
