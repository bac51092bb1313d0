"""Offline scoring and training: survey metrics of a run, policy training and evaluation."""
