"""The "castle walls" defences: poisoned-data detectors, training on generated data, the diffusion classifier."""

from bibaddiff.defenses.detectors import DETECTORS, evaluate_detection, run_detector
from bibaddiff.defenses.diffusion_classifier import class_denoising_errors, diffusion_classify

__all__ = ["DETECTORS", "evaluate_detection", "run_detector", "class_denoising_errors", "diffusion_classify"]
