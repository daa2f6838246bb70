"""Training: losses, configuration, trainer and checkpoints.

Submodules are imported explicitly (``from medseg.training.losses import build_loss``)
so that importing the package does not pull in torch and MONAI.
"""
