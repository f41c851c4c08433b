"""Fine-tuning: the engine of ``quantswap finetune``, usable from Python the same way.

Example (a few steps of IR-Net on 64 Fashion-MNIST images; a real run is ``quantswap finetune``):
    >>> import tempfile
    >>> from quantswap.train import FinetuneConfig, finetune
    >>> cfg = FinetuneConfig(model="timm:test_resnet", method="irnet", weights="none", train_subset=64,
    ...                      val_subset=64, batch_size=32, output=tempfile.mkdtemp() + "/run")
    >>> result = finetune(cfg)
    >>> sorted(result)
    ['checkpoint', 'file_bytes', 'fp32_bytes', 'output', 'parent_top1', 'top1', 'top5']
"""

from quantswap.train.config import FinetuneConfig as FinetuneConfig
from quantswap.train.config import load_recipe as load_recipe
from quantswap.train.engine import RunResult as RunResult
from quantswap.train.engine import finetune as finetune
from quantswap.train.loop import Trainer as Trainer
from quantswap.train.loop import TrainingDiverged as TrainingDiverged
from quantswap.train.loop import distribution_loss as distribution_loss
from quantswap.train.loop import evaluate as evaluate

__all__ = ["FinetuneConfig", "RunResult", "Trainer", "TrainingDiverged", "distribution_loss", "evaluate", "finetune",
           "load_recipe"]
