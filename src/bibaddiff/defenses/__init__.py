"""The "castle walls" defences: poisoned-data detectors, training on generated data, the diffusion classifier."""

from bibaddiff.defenses.detectors import DETECTORS, evaluate_detection, run_detector
from bibaddiff.defenses.diffusion_classifier import class_denoising_errors, diffusion_classify
from bibaddiff.defenses.train_on_generated import train_and_evaluate_classifier

__all__ = ["DETECTORS", "evaluate_detection", "run_detector", "class_denoising_errors", "diffusion_classify",
           "train_and_evaluate_classifier"]
