"""`quantswap finetune` end to end on real Fashion-MNIST: exact resume, torchrun, the CLI, bad input.

The runs are tiny (tens of optimizer steps on a few hundred 32 px images) so the suite stays fast;
what they check is bookkeeping (the same weights after a kill and a resume, DDP equal to one
process), not accuracy, except where the end-to-end test asks for better than chance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import quantswap
from quantswap.cli import main

#: SIGKILL / SIGINT the process from inside its own training loop, at the start of optimizer step ``n``
#: (counted by the progress calls the engine makes once per step), then run the CLI.
_SIGNAL_AT_STEP = """
import os, signal, sys
import quantswap.train.loop as engine
n, name = int(sys.argv[1]), sys.argv[2]
calls, set_progress = 0, engine.set_progress
def counting(model, progress):
    global calls
    calls += 1
    if calls == n:
        os.kill(os.getpid(), getattr(signal, name))
    set_progress(model, progress)
engine.set_progress = counting
from quantswap.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run(args: list[str], *, signal_at: tuple[int, str] | None = None, launcher: list[str] | None = None):
    if signal_at:
        cmd = [sys.executable, "-c", _SIGNAL_AT_STEP, str(signal_at[0]), signal_at[1], *args]
    else:
        cmd = [*(launcher or [sys.executable]), "-m", "quantswap", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _random_parent(name: str, path: Path) -> str:
    torch.manual_seed(0)
    save_file(timm.create_model(name, num_classes=10).state_dict(), path)
    return str(path)


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


def _metrics_rows(run: Path) -> list[dict]:
    """metrics.jsonl without the timing columns (which differ between any two runs)."""
    timing = ("train_seconds", "train_img_s", "img_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in (run / "metrics.jsonl").open()]


def _finished_run(args: list[str], out: Path) -> Path:
    done = _run([*args, "--output", str(out)])
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def resume_args(tmp_path_factory) -> list[str]:
    """A two-epoch IR-Net run (6 steps per epoch, checkpoint every 3 steps) distilled from a file's parent."""
    weights = _random_parent("test_resnet", tmp_path_factory.mktemp("parent") / "test_resnet.safetensors")
    return ["finetune", "--model", "timm:test_resnet", "--method", "irnet", "--weights", weights,
            "--data", "fashion-mnist", "--image-size", "32", "--train-subset", "96", "--val-subset", "64",
            "--epochs", "2", "--batch-size", "16", "--save-every", "3", "--optimizer", "sgd", "--lr", "0.05",
            "--warmup-epochs", "1", "--seed", "3", "--device", "cpu"]  # CPU: bit-exact (CUDA kernels need not be)


@pytest.fixture(scope="module")
def reference_run(resume_args, tmp_path_factory) -> Path:
    return _finished_run(resume_args, tmp_path_factory.mktemp("reference") / "run")


@pytest.mark.parametrize(("step", "signal_name", "exit_code"), [(11, "SIGKILL", -9), (5, "SIGINT", 130)])
def test_a_killed_run_resumes_to_the_same_weights(resume_args, reference_run, tmp_path, step, signal_name, exit_code):
    """SIGKILL mid-step in epoch 2 (3 steps after the last checkpoint) or Ctrl-C in epoch 1, then --resume:
    bit-identical weights, optimizer state, packed checkpoint and metrics to the uninterrupted run."""
    out = tmp_path / "run"
    killed = _run([*resume_args, "--output", str(out)], signal_at=(step, signal_name))
    assert killed.returncode == exit_code, killed.stderr
    if signal_name == "SIGINT":
        assert "continue it with --resume" in killed.stderr
    assert (out / "last.pt").is_file() and not (out / "model").exists()
    assert not list(out.glob(".*.partial"))

    resumed = _run([*resume_args, "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr

    ref, got = _tensors(reference_run), _tensors(out)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_opt = torch.load(reference_run / "last.pt", weights_only=True)["optimizer"]["state"]
    got_opt = torch.load(out / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(ref_opt[i]["momentum_buffer"], got_opt[i]["momentum_buffer"]) for i in ref_opt)
    ref_packed = load_file(reference_run / "model" / "model.safetensors")
    got_packed = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(ref_packed[k], got_packed[k]) for k in ref_packed) and ref_packed.keys() == got_packed.keys()
    rows = [_metrics_rows(r) for r in (reference_run, out)]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_a_corrupt_checkpoint_is_refused_on_resume(resume_args, reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    assert main([*resume_args, "--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "corrupt" in err and "--overwrite" in err


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_its_checkpoint(resume_args, tmp_path):
    out = tmp_path / "run"
    args = [*resume_args, "--output", str(out), "--lr", "1e30", "--save-every", "1", "--warmup-epochs", "0"]
    done = _run(args)
    assert done.returncode == 3, done.stderr
    assert "the loss became" in done.stderr and "Lower --lr" in done.stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_torchrun_two_processes_on_gloo_match_one_process(tmp_path):
    """2 processes x 8 images == 1 process x 16 images, step for step.

    ResumableSampler gives rank r the samples r, r+2, ... of the same permutation, so each step sees
    the same 16 images; DDP averages the two ranks' mean gradients, which equals the mean over 16.
    The model uses GroupNorm (timm's test_efficientnet_gn) because BatchNorm statistics over 8
    images differ from those over 16 (and SyncBatchNorm has no CPU kernel). What is left is float
    summation order (gloo's all-reduce, per-thread conv reductions), about 1e-7 relative per
    gradient. A random-init binary net has huge gradients (weights move by ~10 in 4 steps), so the
    bound is relative to each tensor's largest value: 2e-5 holds (measured: 4e-6 at worst). A
    latent weight within 1e-7 of zero could flip its sign and break this; at 100k weights that is
    rare, and the check would name the tensor.
    """
    weights = _random_parent("test_efficientnet_gn", tmp_path / "parent.safetensors")
    common = ["finetune", "--model", "timm:test_efficientnet_gn", "--method", "irnet", "--weights", weights,
              "--data", "fashion-mnist", "--image-size", "32", "--train-subset", "64", "--val-subset", "32",
              "--epochs", "1", "--optimizer", "sgd", "--lr", "0.002", "--save-every", "0", "--seed", "1",
              "--device", "cpu"]  # gloo, also where a GPU is present
    single = _run([*common, "--batch-size", "16", "--output", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env_threads = os.environ.get("OMP_NUM_THREADS")
    double = _run([*common, "--batch-size", "8", "--output", str(tmp_path / "ddp")], launcher=torchrun)
    assert double.returncode == 0, double.stderr + double.stdout
    assert os.environ.get("OMP_NUM_THREADS") == env_threads

    one, two = _tensors(tmp_path / "single"), _tensors(tmp_path / "ddp")
    start = load_file(weights)
    moved = max((one[k] - start[k]).abs().max().item() for k in start if k in one)
    assert moved > 1e-3  # the runs trained
    for key in one:
        assert (two[key] - one[key]).abs().max() <= 2e-5 * one[key].abs().max(), key
    rows = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("single", "ddp")]
    assert rows[1]["step"] == 4 and rows[1]["train_loss"] == pytest.approx(rows[0]["train_loss"], rel=1e-4)
    assert (tmp_path / "ddp" / "model" / "config.json").is_file()


def test_the_cli_end_to_end_on_real_fashion_mnist(tmp_path, capsys):
    """Train a FP ResNet-18 parent, distil an IR-Net copy from it, evaluate the packed checkpoint."""
    parent, run = tmp_path / "parent", tmp_path / "irnet"
    data = ["--data", "fashion-mnist", "--image-size", "32", "--train-subset", "1024", "--val-subset", "500",
            "--batch-size", "64", "--epochs", "1"]
    assert main(["finetune", "--model", "resnet18", "--method", "none", "--weights", "none", "--lr", "2e-3",
                 "--output", str(parent), *data]) == 0
    assert "FP top-1" in capsys.readouterr().out
    fp_top1 = json.loads((parent / "metrics.jsonl").read_text().splitlines()[-1])["val_top1"]  # the epoch's row
    steps = [json.loads(line) for line in (parent / "metrics.jsonl").open() if '"kind": "step"' in line]
    assert [r["step"] for r in steps] == [10] and {"loss", "lr", "img_s"} <= set(steps[0])  # the training curve
    assert fp_top1 > 30  # chance is 10%

    assert main(["finetune", "--model", "resnet18", "--method", "irnet", "--weights", str(parent),
                 "--output", str(run), *data]) == 0
    table = capsys.readouterr().out
    assert f"FP parent top-1   {fp_top1:.2f}%" in table and "irnet checkpoint" in table
    assert {p.name for p in run.iterdir()} >= {"args.yaml", "metrics.jsonl", "last.pt", "best.pt", "model"}
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["metrics"]["fp_top1"] == round(fp_top1, 2)
    assert f"{config['metrics']['top1']}" in (run / "model" / "README.md").read_text()

    assert main(["eval", "--model", str(run), "--data", "fashion-mnist", "--subset", "500"]) == 0
    assert f"top-1 {config['metrics']['top1']:.2f}%" in capsys.readouterr().out
    # issue 29: the float parent is a checkpoint folder like any other run's: evaluated and exported alike
    assert main(["eval", "--model", str(parent), "--data", "fashion-mnist", "--subset", "500"]) == 0
    assert f"top-1 {fp_top1:.2f}%" in capsys.readouterr().out
    assert main(["export", "--model", str(parent), "--output", str(tmp_path / "parent.onnx")]) == 0
    assert (tmp_path / "parent.onnx").stat().st_size > 4 * 11e6  # float32 weights

    model = quantswap.from_pretrained(run / "model")
    assert quantswap.is_frozen(model) and model.fc.out_features == 10


def test_summary_cli_prints_the_bit_aware_table(capsys):
    assert main(["summary", "--model", "resnet18", "--method", "irnet"]) == 0
    out = capsys.readouterr().out
    assert "QuantConv2d" in out and "theoretical size" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "resnet19"], "unknown torchvision classification model 'resnet19' (did you mean 'resnet18'?)"),
        (["--model", "timm:resnet18x"], "unknown timm model 'resnet18x'"),
        (["--model", "keras:resnet18"], "unknown model source 'keras'"),
        (["--method", "dorefa"], "unknown method 'dorefa'"),
        (["--data", "mnist"], "unknown dataset 'mnist'; use fashion-mnist, cifar10, cifar100 or imagefolder:PATH"),
        (["--data", "imagefolder:/nonexistent/imagenet"], "imagefolder:/nonexistent/imagenet: no such folder"),
        (["--weights", "/nonexistent/parent.safetensors"], "parent.safetensors does not exist; or pass DEFAULT"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["finetune", "--weights", "none", "--output", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_image_folder_without_val_is_refused(tmp_path, capsys):
    (tmp_path / "imagenet" / "train" / "cat").mkdir(parents=True)
    assert main(["finetune", "--weights", "none", "--data", f"imagefolder:{tmp_path / 'imagenet'}",
                 "--output", str(tmp_path / "run")]) == 2
    assert "has no val/ folder" in capsys.readouterr().err


def test_no_pretrained_weights_reachable_offline_says_how_to_pass_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = ["finetune", "--model", "timm:test_resnet", "--weights", "DEFAULT", "--data", "fashion-mnist",
            "--train-subset", "16", "--val-subset", "16", "--output", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pretrained weights of timm:test_resnet could not be fetched" in err
    assert "--weights PATH" in err


def test_a_teacher_with_default_weights_offline_says_how_to_pass_a_file(tmp_path, capsys, monkeypatch):
    """--teacher-weights DEFAULT asks the teacher's builder for its pretrained weights (ReActNet's ResNet-34)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    weights = _random_parent("test_resnet", tmp_path / "parent.safetensors")
    args = ["finetune", "--model", "timm:test_resnet", "--weights", weights, "--teacher", "timm:test_resnet",
            "--teacher-weights", "DEFAULT", "--data", "fashion-mnist", "--train-subset", "16", "--val-subset", "16",
            "--output", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pretrained weights of the teacher timm:test_resnet could not be fetched" in err
    assert "--teacher-weights PATH" in err


def test_imagenet_weights_for_a_10_class_task_get_a_new_head_and_no_teacher(tmp_path, capsys):
    """A parent file with a 1000-class head (ImageNet) loads into a 10-class model with a fresh head;
    distillation from it would teach noise, so it is off by default and refused when asked for."""
    torch.manual_seed(0)
    imagenet = timm.create_model("test_resnet", num_classes=1000)
    save_file(imagenet.state_dict(), tmp_path / "imagenet.safetensors")
    args = ["finetune", "--model", "timm:test_resnet", "--method", "ternary", "--weights",
            str(tmp_path / "imagenet.safetensors"), "--train-subset", "32", "--val-subset", "32", "--batch-size", "16",
            "--max-steps", "1"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "pretrained weights with a new 10-class head (no distillation from it)" in out
    assert "FP parent top-1" not in out
    saved = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)["model"]
    moved = (saved["conv1.0.weight"] - imagenet.state_dict()["conv1.0.weight"]).abs().max()
    assert moved <= 1.5e-3  # the ImageNet weights, after one AdamW step of lr 1e-3

    assert main([*args, "--output", str(tmp_path / "kd"), "--distill"]) == 2
    assert "--distill needs a teacher trained for this task" in capsys.readouterr().err


@pytest.fixture(scope="module")
def staged_args(tmp_path_factory) -> list[str]:
    """ReActNet in two stages from a recipe: W32/A1 for an epoch (6 steps), then W1/A1 for an epoch."""
    folder = tmp_path_factory.mktemp("staged")
    weights = _random_parent("test_resnet", folder / "test_resnet.safetensors")
    recipe = folder / "two-stage.yaml"
    recipe.write_text(
        "method: react\nstages:\n"
        "  - {name: binary activations, epochs: 1, weight_decay: 1.0e-5, method_options: {weights: false}}\n"
        "  - {name: binary weights, epochs: 1, lr: 0.02}\n")
    return ["finetune", "--recipe", str(recipe), "--model", "timm:test_resnet", "--weights", weights,
            "--data", "fashion-mnist", "--image-size", "32", "--train-subset", "96", "--val-subset", "64",
            "--batch-size", "16", "--save-every", "3", "--optimizer", "sgd", "--lr", "0.05", "--seed", "3",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def staged_run(staged_args, tmp_path_factory) -> Path:
    return _finished_run(staged_args, tmp_path_factory.mktemp("staged-reference") / "run")


def test_a_staged_run_trains_each_stage_from_the_last_and_says_so(staged_run):
    rows = [json.loads(line) for line in (staged_run / "metrics.jsonl").open()]
    assert [(r["stage"], r["epoch"], r["step"]) for r in rows] == [(1, 1, 6), (2, 1, 6)]
    saved = torch.load(staged_run / "last.pt", weights_only=True)
    assert saved["state"]["stage"] == 1 and saved["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    loaded = quantswap.from_pretrained(staged_run / "model")
    assert quantswap.get_swap_report(loaded).config.label == "react W1/A1"
    card = (staged_run / "model" / "README.md").read_text()
    assert "binary activations: react W32/A1: 1 epoch, sgd, lr 0.05, weight decay 1e-05" in card
    assert "then binary weights: react W1/A1: 1 epoch, sgd, lr 0.02, weight decay 0" in card


@pytest.mark.parametrize("step", [7, 10])
def test_a_staged_run_killed_in_any_stage_resumes_to_the_same_weights(staged_args, staged_run, tmp_path, step):
    """SIGKILL as stage 2 starts (its start is saved) and in stage 2 (after its step-3 checkpoint):
    --resume rebuilds the W1/A1 model from the W32/A1 stage's and ends bit-identical to the
    uninterrupted run (a kill in stage 1 resumes as an unstaged run does: tested above)."""
    out = tmp_path / "run"
    killed = _run([*staged_args, "--output", str(out)], signal_at=(step, "SIGKILL"))
    assert killed.returncode == -9, killed.stderr
    resumed = _run([*staged_args, "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    ref, got = _tensors(staged_run), _tensors(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert _metrics_rows(staged_run) == _metrics_rows(out)
