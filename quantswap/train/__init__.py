"""Fine-tuning: the engine of ``quantswap finetune``, usable from Python the same way.

Example (a few steps of IR-Net on 64 Fashion-MNIST images; a real run is ``quantswap finetune``):
    >>> import tempfile
    >>> from quantswap.train import FinetuneConfig, finetune
    >>> cfg = FinetuneConfig(model="timm:test_resnet", method="irnet", weights="none", train_subset=64,
    ...                      val_subset=64, batch_size=32, output=tempfile.mkdtemp() + "/run")
    >>> result = finetune(cfg)  # doctest: +ELLIPSIS
    epoch 1: train loss ..., val top-1 ...
    >>> sorted(result)
    ['checkpoint', 'file_bytes', 'fp32_bytes', 'output', 'parent_top1', 'top1', 'top5']
"""

from quantswap.train.config import FinetuneConfig as FinetuneConfig
from quantswap.train.config import load_recipe as load_recipe
from quantswap.train.engine import TrainingDiverged as TrainingDiverged
from quantswap.train.engine import distribution_loss as distribution_loss
from quantswap.train.engine import evaluate as evaluate
from quantswap.train.engine import finetune as finetune

__all__ = ["FinetuneConfig", "TrainingDiverged", "distribution_loss", "evaluate", "finetune", "load_recipe"]
