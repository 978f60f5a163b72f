"""Input pipelines: batches from data pairs and an augmentation spec, one module per engine."""
