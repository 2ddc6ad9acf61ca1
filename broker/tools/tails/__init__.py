"""Tails comet detection (Duev et al. 2021, arXiv:2102.13352) with detectors Nightjar trains.

Stages: simulate (triplets with injected comets and look-alikes) -> train (TensorFlow, exported
to ONNX) -> evaluate (held-out set) and frames (whole CCD quadrants). The per-alert stage lives
in workers/models/tails.py. Importing this package is cheap: TensorFlow loads only in training.
"""
