"""Model cards for quantswap checkpoints, made with huggingface_hub's :class:`~huggingface_hub.ModelCard`.

The card is rendered from a checkpoint's ``config.json`` alone, so the Hub zoo (``hub/``) and
:func:`quantswap.save_pretrained` produce the same card for the same checkpoint.

Example:
    >>> from quantswap.card import model_card
    >>> config = {"base_model": {"name": "torchvision:resnet18", "args": {"num_classes": 10}},
    ...           "quantization": {"method": "irnet", "activations": True},
    ...           "storage": {"fp_dtype": "float16", "ternary_packing": "bits2", "keep_latent": False},
    ...           "size": {"file_bytes": 2_700_000, "theoretical_bytes": 2_690_000, "fp32_bytes": 44_700_000},
    ...           "metrics": {"dataset": "fashion-mnist", "top1": 91.5}}
    >>> card = model_card(config, name="resnet18-irnet")
    >>> card.data.library_name, card.data.tags[:3]
    ('quantswap', ['quantswap', 'binary', 'irnet'])
    >>> "| top-1 on fashion-mnist | 91.50% |" in card.text
    True
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ["model_card", "precision_label"]

_PAPERS = {
    "xnor": "XNOR-Net (Rastegari et al., ECCV 2016)",
    "irnet": "IR-Net (Qin et al., CVPR 2020)",
    "bireal": "Bi-Real Net (Liu et al., ECCV 2018)",
    "mcdonnell": "1 bit per weight (McDonnell, ICLR 2018)",
    "ternary": "ternary weights with residual expansion (He et al., WACV 2019)",
}


def precision_label(quantization: dict[str, Any]) -> str:
    """``"W1/A1"``, ``"W1/A32"`` or ``"ternary t=2 (W2x2/A32)"`` for a method config dict."""
    acts = "A1" if quantization.get("activations") else "A32"
    if quantization.get("method") == "ternary":
        t = int(quantization.get("expansion", 1))
        return f"ternary t={t} (W2x{t}/{acts})"
    return f"W1/{acts}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def model_card(config: dict[str, Any], *, name: str | None = None, repo_id: str | None = None) -> ModelCard:
    """The model card of a checkpoint, from its ``config.json`` alone (``repo_id`` goes in the usage snippet)."""
    base = config["base_model"]["name"]
    source, _, arch = base.partition(":")
    quant = config["quantization"]
    method = quant["method"]
    storage = config.get("storage", {})
    size = config.get("size", {})
    metrics = config.get("metrics") or {}
    name = name or (repo_id.split("/")[-1] if repo_id else f"{arch}-{method}")
    kind = "ternary" if method == "ternary" else "binary"
    label = precision_label(quant)

    eval_results = None
    if metrics.get("dataset") and metrics.get("top1") is not None:
        eval_results = [EvalResult(task_type="image-classification", dataset_type=metrics["dataset"],
                                   dataset_name=metrics["dataset"], metric_type="accuracy",
                                   metric_value=float(metrics["top1"]), metric_name="top-1 accuracy (%)")]
    data = ModelCardData(
        library_name="quantswap",
        tags=["quantswap", kind, method, label.split(" ")[0] if kind == "binary" else f"ternary-t{quant.get('expansion', 1)}",
              source, arch, "image-classification"],
        pipeline_tag="image-classification",
        model_name=name,
        eval_results=eval_results,
    )

    args = ", ".join(f"{k}={v!r}" for k, v in (config["base_model"].get("args") or {}).items())
    rows = [("base model", f"`{base}` ({args})" if args else f"`{base}`"),
            ("method", _PAPERS.get(method, method)),
            ("precision", f"{label}; first and last layers real unless configured otherwise")]
    if config.get("layers"):
        rows.append(("layers", f"{config['layers']['quantized']} quantized, {config['layers']['kept_real']} kept real"))
    rows.append(("real-valued tensors stored as", storage.get("fp_dtype", "float32")))
    if method == "ternary":
        rows.append(("ternary packing", {"bits2": "2 bits per code", "base3": "base 3, 5 codes per byte"}.get(
            storage.get("ternary_packing"), storage.get("ternary_packing", ""))))
    if size:
        rows.append(("file size (model.safetensors)",
                     f"{_mb(size['file_bytes'])}: {size['fp32_bytes'] / size['file_bytes']:.1f}x smaller than FP32 "
                     f"({_mb(size['fp32_bytes'])}), {size['file_bytes'] / size['theoretical_bytes']:.3f}x the "
                     f"theoretical minimum ({_mb(size['theoretical_bytes'])})"))
    if metrics.get("top1") is not None:
        rows.append((f"top-1 on {metrics.get('dataset', 'the test set')}", f"{float(metrics['top1']):.2f}%"))
    if metrics.get("fp_top1") is not None:
        rows.append(("top-1 of the FP parent", f"{float(metrics['fp_top1']):.2f}%"))
    if metrics.get("recipe"):
        rows.append(("recipe", f"`{metrics['recipe']}`"))
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    where = repo_id or "ORG/NAME"  # the Hub id, or the path of this folder
    text = f"""---
{data.to_yaml()}
---

# {name}

A {kind} version of `{base}` made with [quantswap](https://pypi.org/project/quantswap/): {label},
{_PAPERS.get(method, method)}.

{table}

## Use

```python
import quantswap

model = quantswap.from_pretrained("{where}")  # rebuilt from the builder above, unpacked, eval mode
```

The weights are bit-packed in `model.safetensors`: {"one bit" if kind == "binary" else "two bits (or 1.6)"} per
quantized weight, plus one float32 scale per {"output channel" if kind == "binary" else "branch"}.
`quantswap.from_pretrained` unpacks them into float tensors. **PyTorch inference of this model is not
faster than the FP model**: PyTorch has no binary or ternary convolution kernels, so the gain is the
file size here, and speed only on runtimes with XNOR/popcount or ternary kernels.

## Configuration

```json
{json.dumps(quant, indent=2)}
```
"""
    return ModelCard(text)
