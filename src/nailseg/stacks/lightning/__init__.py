"""The Lightning stack: PyTorch Lightning + segmentation_models_pytorch and transformers SegFormer,
with DataLoader/albumentations, kornia and DALI pipelines. Only this folder (and mmdet, which
is torch too) imports torch."""
