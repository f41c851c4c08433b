"""Model cards for quantswap checkpoints, made with huggingface_hub's :class:`~huggingface_hub.ModelCard`.

The card is rendered from a checkpoint's :class:`~quantswap.checkpoint_config.CheckpointConfig`
alone, so the Hub zoo (``hub/``) and :func:`quantswap.save_pretrained` produce the same card for the
same checkpoint. Its metadata follows the Hub's conventions: ``library_name``, ``license``,
``datasets``, ``pipeline_tag``, ``model-index`` with the measured results, and for a timm base
``base_model: timm/<name>`` with ``base_model_relation: quantized``.

Example:
    >>> from quantswap.card import model_card
    >>> from quantswap.checkpoint_config import CheckpointConfig, CheckpointSize
    >>> from quantswap.config import config_for
    >>> from quantswap.models import BaseModelSpec
    >>> config = CheckpointConfig(BaseModelSpec("timm:resnet18", {"num_classes": 10}), config_for("irnet"),
    ...                           size=CheckpointSize(2_700_000, 2_690_000, 44_700_000),
    ...                           metrics={"dataset": "fashion-mnist", "top1": 91.5})
    >>> card = model_card(config, name="resnet18-irnet")
    >>> card.data.library_name, card.data.tags[:3], card.data.base_model, card.data.datasets
    ('quantswap', ['quantswap', 'binary', 'irnet'], 'timm/resnet18', ['zalando-datasets/fashion_mnist'])
    >>> "| top-1 on fashion-mnist | 91.50% |" in card.text
    True
"""

from __future__ import annotations

import json

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from quantswap.checkpoint_config import CheckpointConfig
from quantswap.data import DATASETS

__all__ = ["model_card"]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _metadata(config: CheckpointConfig, name: str) -> ModelCardData:
    """The card's YAML header: what the Hub indexes."""
    quant, metrics = config.quantization, config.metrics
    source, _, arch = config.base_model.name.partition(":")
    dataset = metrics.get("dataset")
    hub_dataset = DATASETS[dataset].hub_id if dataset in DATASETS else None
    eval_results = None
    if dataset and metrics.get("top1") is not None:
        eval_results = [EvalResult(task_type="image-classification", dataset_type=hub_dataset or dataset,
                                   dataset_name=dataset, metric_type="accuracy",
                                   metric_value=float(metrics["top1"]), metric_name="top-1 accuracy (%)")]
    data_config = config.pretrained_cfg or {}
    base = None
    if source == "timm":
        base = data_config.get("hf_hub_id") or f"timm/{arch}"
    return ModelCardData(
        library_name="quantswap",
        license=config.license or data_config.get("license") or "other",
        tags=["quantswap", *((quant.kind, quant.method, quant.tag) if quant else ("float",)), source, arch,
              "image-classification"],
        pipeline_tag="image-classification",
        datasets=[hub_dataset] if hub_dataset else None,
        base_model=base,
        base_model_relation=("quantized" if quant else "finetune") if base else None,
        model_name=name,
        eval_results=eval_results,
    )


def _speed(quant) -> str:
    """What the card says about inference speed: only layers the packed kernels serve run faster."""
    from quantswap.nn.packed import packs

    if packs(quant):
        return ("On the CPU, `quantswap.from_pretrained` keeps the binary layers' weights packed in memory (one bit\n"
                "each) and runs them on quantswap's XOR-popcount kernels (compiled once; AVX-512 VPOPCNTDQ, AVX2,\n"
                "NEON or portable C++): a W1/A1 ResNet-18 at 224 px, batch 1, ran 2.7-5.6x faster than the FP32\n"
                "model on a 2-core AVX-512 CPU (quantswap's `benchmarks/inference.py`). The first conv, BatchNorm,\n"
                "pooling and real layers run as float32. `backend=\"float\"` decodes every layer to float instead.")
    if quant.kind == "binary" and quant.activations:  # W1/A1 whose binary sets are not ±1 (AdaBin)
        why = "whose weights *and* activations are ±1, which this model's two-valued sets are not"
    else:
        why = "whose weights *and* activations are binary (W1/A1), which this model's are not"
    return ("`quantswap.from_pretrained` decodes them into float tensors. **PyTorch inference of this model is not\n"
            f"faster than the FP model**: quantswap's packed kernels serve layers\n{why}; the gain is the file size.")


def _rows(config: CheckpointConfig) -> list[tuple[str, str]]:
    """The card's table: base, method, precision, layers, storage, size, accuracy, preprocessing."""
    quant, storage, size, metrics = config.quantization, config.storage, config.size, config.metrics
    args = ", ".join(f"{k}={v!r}" for k, v in config.base_model.args.items())
    base = config.base_model.name
    rows = [("base model", f"`{base}` ({args})" if args else f"`{base}`")]
    if quant is None:
        rows.append(("precision", "float: not quantized (a FP parent for quantswap's methods)"))
    else:
        rows += [("method", quant.paper or quant.method),
                 ("precision", f"{quant.description}; first and last layers real unless configured otherwise")]
    if config.layers:
        rows.append(("layers", f"{config.layers['quantized']} quantized, {config.layers['kept_real']} kept real"))
    rows.append(("real-valued tensors stored as", storage.fp_dtype))
    if quant is not None and quant.kind == "ternary":
        rows.append(("ternary packing", f"{storage.ternary_packing}: {storage.bits_per_code(3):g} bits per code"))
    if size:
        rows.append(("file size (model.safetensors)",
                     f"{_mb(size.file_bytes)}: {size.compression:.1f}x smaller than FP32 ({_mb(size.fp32_bytes)}), "
                     f"{size.ratio:.3f}x the theoretical minimum ({_mb(size.theoretical_bytes)})" if quant else
                     _mb(size.file_bytes)))
    if metrics.get("top1") is not None:
        on = f" ({metrics['val_images']:,} test images)" if isinstance(metrics.get("val_images"), int) else ""
        rows.append((f"top-1 on {metrics.get('dataset', 'the test set')}{on}", f"{float(metrics['top1']):.2f}%"))
    if metrics.get("fp_top1") is not None:
        rows.append(("top-1 of the FP parent", f"{float(metrics['fp_top1']):.2f}%"))
    if metrics.get("recipe"):
        rows.append(("recipe", f"`{metrics['recipe']}`"))
    if metrics.get("training"):
        rows.append(("training", str(metrics["training"])))
    if config.pretrained_cfg:
        shown = {k: v for k, v in config.pretrained_cfg.items() if k in ("input_size", "interpolation", "mean", "std",
                                                                       "crop_pct", "crop_mode")}
        rows.append(("preprocessing (as trained; timm data config)", ", ".join(f"{k}={v}" for k, v in shown.items())))
    return rows


def _onnx(repo_id: str | None, input_size: tuple[int, int, int]) -> str:
    """The card's ONNX section, for a repo that holds ``model.onnx`` (see :func:`quantswap.export_onnx`)."""
    shape = ", ".join(str(v) for v in (1, *input_size))
    return f"""
## ONNX

`model.onnx` holds the same model for onnxruntime (1.23 or later) and other ONNX runtimes: each
quantized weight is an INT2 code with its float32 scale, decoded by `Cast` and `Mul` (opset 25), which
onnxruntime folds into float weights when the session loads; binary activations are `x >= 0 ? 1 : -1`;
the batch axis is dynamic.

```python
import numpy as np
import onnxruntime
from huggingface_hub import hf_hub_download

session = onnxruntime.InferenceSession(hf_hub_download("{repo_id or "ORG/NAME"}", "model.onnx"))
pixel_values = np.random.rand({shape}).astype(np.float32)  # an image batch, preprocessed as in the table above
logits = session.run(["logits"], {{"pixel_values": pixel_values}})[0]
```
"""


def _float_card(config: CheckpointConfig, name: str, repo_id: str | None, table: str) -> ModelCard:
    """The card of a float checkpoint: a FP parent, the model quantswap's methods start from."""
    return ModelCard(f"""---
{_metadata(config, name).to_yaml()}
---

# {name}

`{config.base_model.name}` in float, saved with [quantswap](https://pypi.org/project/quantswap/): the FP
parent that quantswap's binary and ternary models start from and are distilled from.

{table}

## Use

```python
import quantswap

model = quantswap.from_pretrained("{repo_id or "ORG/NAME"}")  # rebuilt from the builder above, eval mode
bnn = quantswap.binarize(model, method="irnet")  # a binary copy of it, to fine-tune
```
""")


def model_card(config: CheckpointConfig, *, name: str | None = None, repo_id: str | None = None,
               onnx_input_size: tuple[int, int, int] | None = None) -> ModelCard:
    """The model card of a checkpoint, from its config alone (``repo_id`` goes in the usage snippet);
    with ``onnx_input_size`` (C, H, W) it also says how to run the repo's ``model.onnx``."""
    quant = config.quantization
    arch = config.base_model.name.partition(":")[2]
    name = name or (repo_id.split("/")[-1] if repo_id else f"{arch}-{quant.method if quant else 'float'}")
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in _rows(config))])
    if quant is None:
        return _float_card(config, name, repo_id, table)
    binary = quant.kind == "binary"
    text = f"""---
{_metadata(config, name).to_yaml()}
---

# {name}

A {quant.kind} version of `{config.base_model.name}` made with [quantswap](https://pypi.org/project/quantswap/):
{quant.description}, {quant.paper or quant.method}.

{table}

## Use

```python
import quantswap

model = quantswap.from_pretrained("{repo_id or "ORG/NAME"}")  # rebuilt from the builder above, unpacked, eval mode
```

The weights are bit-packed in `model.safetensors`: {"one bit" if binary else "two bits (or 1.6)"} per
quantized weight, plus one float32 scale per {"output channel" if binary else "branch"}.
{_speed(quant)}
{_onnx(repo_id, onnx_input_size) if onnx_input_size else ""}
## Citation

{quant.citation or quant.paper or quant.method}

## Configuration

```json
{json.dumps(quant.to_dict(), indent=2)}
```
"""
    return ModelCard(text)
