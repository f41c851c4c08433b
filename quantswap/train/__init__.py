"""Fine-tuning: the engine of ``quantswap finetune``, usable from Python the same way.

Example:
    >>> from quantswap.train import FinetuneConfig, finetune
    >>> cfg = FinetuneConfig(model="resnet18", method="irnet", weights="none", epochs=1)  # doctest: +SKIP
    >>> result = finetune(cfg)  # doctest: +SKIP
"""

from quantswap.train.config import FinetuneConfig as FinetuneConfig
from quantswap.train.config import load_recipe as load_recipe
from quantswap.train.engine import TrainingDiverged as TrainingDiverged
from quantswap.train.engine import distribution_loss as distribution_loss
from quantswap.train.engine import evaluate as evaluate
from quantswap.train.engine import finetune as finetune

__all__ = ["FinetuneConfig", "TrainingDiverged", "distribution_loss", "evaluate", "finetune", "load_recipe"]
