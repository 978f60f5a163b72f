"""Framework-free layers every stack shares: data, augmentation spec, metrics, run folders,
evaluation, atomic I/O and the runtime rules. Nothing under ``core/`` imports torch,
TensorFlow or MMDetection, so the CLI and the data tools stay light."""
