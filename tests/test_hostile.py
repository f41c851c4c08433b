"""Hostile and careless input (issue 12): configs, headers, folders, recipes and flags that tried to
lose data, leak a file, exhaust memory or raise an unclear error. Each case fails on the code before
the fix. Fast: small models, no training beyond one step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models import resnet18

import quantswap
from quantswap.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from quantswap.cli import main

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A small binary checkpoint (ResNet-18, 10 classes) to damage, copied per test."""
    folder = tmp_path_factory.mktemp("saved") / "ckpt"
    quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="xnor"), folder)
    return folder


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in saved.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def _edit_weights(folder: Path, edit, metadata_edit=None) -> None:
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(folder / WEIGHTS_NAME)
    edit(tensors)
    if metadata_edit:
        metadata_edit(metadata)
    save_file(tensors, folder / WEIGHTS_NAME, metadata=metadata)
    _edit_config(folder, lambda c: c.pop("weights_sha256", None))  # the digest would catch any edit first


# -- 1. a tiny config must not allocate gigabytes -----------------------------------------------


_PEAK_RSS = """
import resource, sys, time, quantswap
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    quantswap.from_pretrained(sys.argv[1])
except quantswap.CheckpointError as err:
    print(type(err).__name__, round(time.perf_counter() - start, 3),
          (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, err)
"""


@pytest.mark.parametrize("edit", [
    lambda c: c["base_model"]["args"].update(num_classes=90_000),  # allowed, but not what the file holds
    lambda c: c["quantization"].update(method="ternary", expansion=8, activations=False,
                                       thresholds=[0.01 * (i + 1) for i in range(8)]),
], ids=["num_classes", "expansion"])
def test_a_config_that_disagrees_with_its_file_is_refused_fast_and_small(ckpt, edit):
    _edit_config(ckpt, edit)
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(ckpt)], capture_output=True, text=True, timeout=120)
    name, seconds, megabytes, message = done.stdout.split(" ", 3)
    assert name == "CheckpointError" and "config and weights do not match" in message, done.stdout + done.stderr
    assert int(megabytes) < 100, done.stdout  # the seconds are reported, not asserted: no timed unit tests


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["base_model"]["args"].update(num_classes=2_000_000), r"num_classes=2000000 is out of range"),
    (lambda c: c["quantization"].update(method="ternary", expansion=200, activations=False), "from 1 to 8"),
    (lambda c: c["base_model"]["args"].update(global_pool="evil"), "global_pool='evil' is not one of"),
    (lambda c: c["base_model"].update(args=[1, 2]), "builder arguments must be a mapping"),
    (lambda c: c.update(leaf_modules=5), "field 'leaf_modules': must be a list of module names"),
])
def test_builder_arguments_and_expansion_are_bounded(ckpt, edit, match):
    _edit_config(ckpt, edit)
    with pytest.raises(CheckpointError, match=match):
        quantswap.from_pretrained(ckpt)


def test_deeply_nested_json_is_a_clear_error(ckpt):
    (ckpt / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        quantswap.from_pretrained(ckpt)


# -- values and metadata checked on load ------------------------------------------------------------


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["layer1.0.conv1.weight_quantizer.scale"].__setitem__(0, float("nan")), "negative, infinite or NaN"),
    (lambda t: t["layer1.0.conv1.weight_quantizer.scale"].__setitem__(0, -1.0), "negative, infinite or NaN"),
    (lambda t: t.__setitem__("fc.weight", t["fc.weight"].to(torch.int32)), "expects a floating tensor"),
])
def test_damaged_values_are_refused(ckpt, edit, match):
    _edit_weights(ckpt, edit)
    with pytest.raises(CheckpointError, match=match):
        quantswap.from_pretrained(ckpt)


def test_raw_codes_out_of_range_and_bad_packing_metadata_are_refused(ckpt):
    def raw_codes(t):
        t["layer1.0.conv1.weight_quantizer.codes"] = torch.full((64, 64, 3, 3), 7, dtype=torch.int8)

    def unpacked(m):
        packed = json.loads(m["quantswap.packed"])
        del packed["layer1.0.conv1.weight_quantizer.codes"]
        m["quantswap.packed"] = json.dumps(packed)

    _edit_weights(ckpt, raw_codes, unpacked)
    with pytest.raises(CheckpointError, match="codes outside -1, 0, \\+1"):
        quantswap.from_pretrained(ckpt)
    _edit_weights(ckpt, lambda t: None, lambda m: m.update({"quantswap.packed": "5"}))
    with pytest.raises(CheckpointError, match="metadata 'quantswap.packed' must map"):
        quantswap.from_pretrained(ckpt)


def test_non_finite_latent_weights_are_warned_about_at_swap_time():
    model = resnet18(num_classes=10)
    model.layer1[0].conv1.weight.data[0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="layer1.0.conv1.weight holds inf or NaN"):
        quantswap.binarize(model, method="xnor")


# -- 2, 3, 9: the Hub -----------------------------------------------------------------------------------


def test_push_refuses_a_file_that_links_outside_the_folder_and_junk_weights(ckpt, tmp_path, minihub):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (ckpt / WEIGHTS_NAME).unlink()
    (ckpt / WEIGHTS_NAME).symlink_to(secret)
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        quantswap.push_to_hub(ckpt, "testorg/leak")
    (ckpt / WEIGHTS_NAME).unlink()
    save_file({"x": torch.zeros(3)}, ckpt / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="not a quantswap checkpoint"):
        quantswap.push_to_hub(ckpt, "testorg/leak")
    from huggingface_hub import HfApi

    assert not HfApi().repo_exists("testorg/leak")


def test_a_bad_repo_id_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    for repo_id in ("org/..", "../x", "org/name/more", "org/a b"):
        with pytest.raises(ValueError, match="repo_id must look like 'org/name'"):
            quantswap.push_to_hub(quantswap.binarize(resnet18(num_classes=10), method="xnor"), repo_id)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("revision", ["../../refs/x", "/etc", "a\\b", "main\n", ""])
def test_revisions_that_could_name_a_path_are_refused_before_the_client(revision):
    with pytest.raises(ValueError, match="is not a branch, tag or commit name"):
        quantswap.from_pretrained("org/name", revision=revision)


def test_a_local_folder_that_shadows_a_repo_id_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    with pytest.raises(quantswap.CheckpointNotFoundError, match="was read as the local folder"):
        quantswap.from_pretrained("org/name")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(quantswap.CheckpointNotFoundError, match="afile is a file, not a folder"):
        quantswap.from_pretrained("afile/model")


# -- 4, 5: saving --------------------------------------------------------------------------------------


def test_an_overwrite_interrupted_before_the_config_is_refused_on_load(ckpt, monkeypatch):
    import quantswap.checkpoint as checkpoint

    real = os.replace

    def interrupted(src, dst):
        if Path(dst).name == CONFIG_NAME:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="irnet"), ckpt)
    monkeypatch.undo()
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".ckpt.")]  # no staging folder left
    with pytest.raises(CheckpointError, match="is not the weights file .* was saved with"):
        quantswap.from_pretrained(ckpt)


def test_an_overwrite_blocked_by_a_folder_replaces_nothing(ckpt):
    before = (ckpt / WEIGHTS_NAME).read_bytes()
    (ckpt / CONFIG_NAME).rename(ckpt / "config.saved")
    (ckpt / CONFIG_NAME).mkdir()
    with pytest.raises(CheckpointError, match="is not a file"):
        quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="irnet"), ckpt)
    assert (ckpt / WEIGHTS_NAME).read_bytes() == before


def test_float16_overflow_is_refused_naming_the_tensor(tmp_path):
    model = quantswap.binarize(resnet18(num_classes=10), method="xnor")
    model.bn1.running_var[0] = 1e5
    with pytest.raises(CheckpointError, match="'bn1.running_var'.*fp_dtype='bfloat16'"):
        quantswap.save_pretrained(model, tmp_path / "f16", fp_dtype="float16")
    assert not (tmp_path / "f16").exists()
    quantswap.save_pretrained(model, tmp_path / "bf16", fp_dtype="bfloat16")  # bfloat16 has float32's range


def test_a_model_on_the_meta_device_is_refused(tmp_path):
    with torch.device("meta"):
        model = quantswap.binarize(resnet18(num_classes=10), method="xnor")
    with pytest.raises(ValueError, match="meta device"):
        quantswap.save_pretrained(model, tmp_path / "m")


def test_saved_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="xnor"), tmp_path / "c")
    finally:
        os.umask(old)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o755
    assert {(p.stat().st_mode & 0o777) for p in (tmp_path / "c").iterdir()} == {0o644}


# -- 6: IR-Net on constant filters ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_irnet_gives_a_constant_filter_a_zero_weight(dtype):
    from quantswap.methods.irnet import IRNetWeight

    w = torch.randn(4, 3, 3, 3)
    w[0] = 0.01
    w[1] = 0.0
    q = IRNetWeight()(w.to(dtype))
    assert q.dtype == dtype and torch.isfinite(q).all()
    assert torch.equal(q[:2], torch.zeros_like(q[:2])) and q[2:].abs().min() > 0


# -- 7, 8 and the fine-tune CLI ----------------------------------------------------------------------------

TINY = ["finetune", "--model", "timm:test_resnet", "--weights", "none", "--train-subset", "32", "--val-subset", "32",
        "--batch-size", "16", "--image-size", "32", "--device", "cpu"]


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    from quantswap.train import FinetuneConfig
    from quantswap.train.run_state import RunFolder

    out = tmp_path / "run"
    with RunFolder(FinetuneConfig(output=str(out))).lock():
        assert main([*TINY, "--method", "xnor", "--output", str(out)]) == 2
    assert f"is in use by another quantswap finetune (pid {os.getpid()})" in capsys.readouterr().err
    assert not (out / "args.yaml").exists()


def test_resume_with_another_configuration_is_refused_listing_the_differences(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--method", "xnor", "--max-steps", "1", "--output", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    assert main([*TINY, "--method", "irnet", "--epochs", "2", "--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "epochs: 1 -> 2" in err and "method: 'xnor' -> 'irnet'" in err and "--overwrite" in err
    assert (out / "last.pt").read_bytes() == before


def test_resume_forgets_metrics_rows_its_checkpoint_does_not_hold(tmp_path):
    from quantswap.train import FinetuneConfig
    from quantswap.train.run_state import RunFolder, RunState

    run = RunFolder(FinetuneConfig(output=str(tmp_path)))
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')  # killed after row 2, before last.pt
    run._forget_rows_after(RunState(stage=0, epoch=1))
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    staged = '{"stage": 1, "epoch": 1}\n{"stage": 1, "epoch": 2}\n{"stage": 2, "epoch": 1}\n'
    (tmp_path / "metrics.jsonl").write_text(staged)  # last.pt: stage 2 (index 1) before its first epoch ended
    run._forget_rows_after(RunState(stage=1, epoch=0))
    assert (tmp_path / "metrics.jsonl").read_text() == staged.rsplit('{"stage": 2', 1)[0]


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--label-smoothing", "2"], "label_smoothing must be in [0, 1]"),
    (["--num-classes", "0"], "num_classes must be in"),
    (["--train-subset", "0"], "train_subset must be in"),
    (["--image-size", "4"], "image_size must be in [8, 2048]"),
    (["--method", "ternary", "--expansion", "0"], "expansion must be an integer from 1 to 8"),
    (["--max-steps", "-3"], "max_steps must be in"),
    (["--optimizer", "adamx"], "unknown optimizer 'adamx' (did you mean 'adamax'?)"),
    (["--schedule", "linear"], "unknown schedule 'linear'"),
    (["--push-to-hub", "org/.."], "repo_id must look like 'org/name'"),
    (["--device", "gpu0"], "--device 'gpu0' is not a device"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main([*TINY, *flags, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_recipe_with_a_word_for_lr_and_an_output_that_is_a_file(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: fast\n")
    assert main([*TINY, "--recipe", str(recipe), "--output", str(tmp_path / "run")]) == 2
    assert "lr must be a finite number, got 'fast'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*TINY, "--output", str(tmp_path / "file")]) == 2
    assert "is a file; the run needs a folder" in capsys.readouterr().err


def test_eval_and_summary_refuse_impossible_sizes(ckpt, capsys):
    _edit_config(ckpt, lambda c: c["metrics"].update(image_size=4096))
    assert main(["eval", "--model", str(ckpt), "--subset", "8"]) == 2
    assert "image_size 4096" in capsys.readouterr().err
    assert main(["summary", "--model", "resnet18", "--input-size", "0", "0"]) == 2
    assert "input_size (1, 3, 0, 0) is out of range" in capsys.readouterr().err
    assert main(["summary", "--model", "resnet18", "--input-size", "1", "3", "100000", "100000"]) == 2
    assert "sides from 1 to 2048 px" in capsys.readouterr().err


def test_eval_checks_the_models_classes_against_the_datas(ckpt, capsys):
    """Issue 29: a 1000-class model evaluated on the 10-class default printed top-1 0.00 % and exited 0; the
    default is now the dataset the checkpoint names, and the classes must match (checked before a download)."""
    _edit_config(ckpt, lambda c: c["metrics"].update(dataset="fashion-mnist"))
    assert main(["eval", "--model", str(ckpt), "--data", "cifar100", "--subset", "8"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "has 10 classes and cifar100 has 100; it was trained on fashion-mnist: pass --data fashion-mnist" in err
    _edit_config(ckpt, lambda c: c.update(metrics={}))
    assert main(["eval", "--model", str(ckpt), "--subset", "8"]) == 2
    assert "does not say which dataset it was trained on; pass --data" in capsys.readouterr().err


def test_every_entry_point_takes_the_same_input_size_forms():
    """Issue 29: summary took N C H W only and export C H W or H W; now an int, (H, W), (C, H, W) and
    (N, C, H, W) everywhere, checked against the model's first convolution."""
    from torchvision.models import resnet18

    from quantswap.export.onnx import _input_size

    bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    ops = {quantswap.summary(bnn, input_size=size).ops for size in (64, (64, 64), (3, 64, 64), (1, 3, 64, 64))}
    assert len(ops) == 1
    assert {_input_size(bnn, size) for size in (64, (64, 64), (3, 64, 64), (4, 3, 64, 64))} == {(3, 64, 64)}
    with pytest.raises(ValueError, match=r"has 1 channels, but the model's first convolution takes 3: pass \(3, 64, 64\)"):
        quantswap.summary(bnn, input_size=(1, 64, 64))
