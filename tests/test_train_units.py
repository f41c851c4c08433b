"""Fine-tuning pieces that need no training run: the distillation loss, recipes, options and refusals."""

import argparse
import json
import math
import os
import shutil

import pytest
import torch

import quantswap
from quantswap.cli import main
from quantswap.data import ResumableSampler
from quantswap.train import FinetuneConfig, distribution_loss, load_recipe


def test_distribution_loss_matches_its_formula_and_gradient():
    """L = -mean_b Σ_c softmax(z_T)_c log softmax(z_S)_c (docs/methods.md#distillation); dL/dz_S = (softmax(z_S) - softmax(z_T)) / B."""
    torch.manual_seed(0)
    s = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 10, dtype=torch.float64)
    loss = distribution_loss(s, t)
    p_t, log_p_s = t.softmax(1), s.log_softmax(1)
    expected = -sum((p_t[b] * log_p_s[b]).sum() for b in range(6)) / 6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # computed in float32 inside
    loss.backward()
    assert torch.allclose(s.grad, (s.detach().softmax(1) - p_t) / 6, atol=1e-6)


def test_distribution_loss_is_minimal_when_the_student_copies_the_teacher():
    t = torch.randn(4, 5)
    entropy = -(t.softmax(1) * t.log_softmax(1)).sum(1).mean()
    assert distribution_loss(t, t).item() == pytest.approx(entropy.item(), rel=1e-5)
    assert distribution_loss(t + torch.randn(4, 5), t) > distribution_loss(t, t)


def test_resumable_sampler_resumes_mid_epoch_and_shards():
    full = list(ResumableSampler(10, shuffle=True, seed=3))
    resumed = ResumableSampler(10, shuffle=True, seed=3)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == full[4:] and len(resumed) == 6
    shards = [list(ResumableSampler(10, shuffle=True, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(shards, [])[:10]) != [] and {i for s in shards for i in s} == set(range(10))
    assert all(len(s) == 4 for s in shards)  # padded to a multiple of the ranks


def test_recipe_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: resnet18\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['learning_rate'\]"):
        load_recipe(path)
    path.write_text("model: resnet18\nmethod: dorefa\n")
    with pytest.raises(ValueError, match="unknown method 'dorefa'"):
        load_recipe(path)


def test_every_shipped_recipe_is_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        FinetuneConfig.from_dict(load_recipe(path))


def test_an_output_folder_holding_another_run_is_refused(tmp_path, capsys):
    (tmp_path / "args.yaml").write_text("model: resnet18\n")
    assert main(["finetune", "--weights", "none", "--output", str(tmp_path)]) == 2
    assert "holds another run; pass --resume" in capsys.readouterr().err
    assert main(["finetune", "--weights", "none", "--output", str(tmp_path / "new"), "--resume"]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_refused_and_overwrite_deletes_nothing_of_its_own(tmp_path, capsys):
    """Issue 29: a save_pretrained folder with a user's notes and metrics.jsonl lost files to a run."""
    folder = tmp_path / "mine"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "notes.txt").write_text("mine")
    (folder / "metrics.jsonl").write_text("{}\n")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    for extra in ([], ["--overwrite"]):
        assert main(["finetune", "--weights", "none", "--output", str(folder), *extra]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "is not a quantswap run folder (no args.yaml) and holds metrics.jsonl, model, which a run would " \
               "replace" in err
        assert sorted(p.relative_to(folder) for p in folder.rglob("*") if p.name != ".lock") == before
    (folder / "metrics.jsonl").unlink()
    shutil.rmtree(folder / "model")
    (folder / "notes.txt").write_text("mine")
    assert main(["finetune", "--weights", "none", "--output", str(folder)]) == 2
    assert "holds notes.txt; choose a new or empty --output, or pass --overwrite" in \
        " ".join(capsys.readouterr().err.split())


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    """Issue 29: errors found after the lock was taken left a folder holding only ``.lock``."""
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    for args in (["--weights", str(junk)], ["--resume"], ["--weights", "none", "--include", "nothing.*"]):
        out = tmp_path / "run"
        assert main(["finetune", *args, "--output", str(out), "--train-subset", "64", "--val-subset", "64"]) == 2
        capsys.readouterr()
        assert not out.exists(), args


def test_a_save_option_is_checked_before_training_and_a_resume_may_change_it(tmp_path, capsys):
    """Issue 29: ``--fp-dtype int8`` trained the whole run, then failed to save it, and ``--resume`` refused to
    change it."""
    from quantswap.train.run_state import RESUMABLE

    out = tmp_path / "run"
    assert main(["finetune", "--weights", "none", "--fp-dtype", "int8", "--output", str(out)]) == 2
    assert "fp_dtype 'int8' is not a dtype" in capsys.readouterr().err and not out.exists()
    assert {"fp_dtype", "push_to_hub"} <= RESUMABLE


def test_bad_options(capsys):
    assert main(["finetune", "--method", "dorefa"]) == 2
    assert "unknown method 'dorefa'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", "--epochs", "many"])


def test_include_and_exclude_reach_the_swap():
    from torchvision.models import resnet18

    from quantswap import get_swap_report
    from quantswap.cli.finetune import add_parser, config_from_args
    from quantswap.train.parent import build_student as _swap

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    cfg = config_from_args(parser.parse_args(["finetune", "--exclude", "layer4.*", "layer3.0.conv1"]))
    assert cfg.exclude == ["layer4.*", "layer3.0.conv1"] and cfg.include is None
    report = get_swap_report(_swap(cfg, resnet18(num_classes=10)))
    assert report.kept_real["layer3.0.conv1"] == report.kept_real["layer4.1.conv2"] == "matched by exclude"
    assert "layer3.0.conv2" in report.quantized

    cfg = FinetuneConfig(method="ternary", include=["layer1.*"])
    report = get_swap_report(_swap(cfg, resnet18(num_classes=10)))
    assert report.quantized == [f"layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)]


def test_method_options_reach_the_swap_from_flags_and_recipes(tmp_path):
    """Any option of the method's config: ``--method-options KEY=VALUE`` over a recipe's ``method_options``."""
    from quantswap.cli.finetune import add_parser, config_from_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: irnet\nmethod_options: {t_min: 0.01, keep_downsample: true}\n")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    cfg = config_from_args(parser.parse_args(["finetune", "--recipe", str(recipe), "--method-options",
                                              "keep-downsample=false"]))
    assert cfg.method_options == {"t_min": 0.01, "keep_downsample": False}
    config = cfg.quant_config()
    assert (config.t_min, config.keep_downsample) == (0.01, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--method-options", "t_min"])  # not KEY=VALUE


@pytest.mark.parametrize(("stages", "message"), [
    ([], "non-empty list of mappings"),
    ([{"epoch": 2}], r"stage 1: unknown or run-wide option\(s\) \['epoch'\] \(did you mean 'epochs'\?\)"),
    ([{"epochs": 1}, {"data": "cifar10"}], r"stage 2: unknown or run-wide option\(s\) \['data'\]"),
    ([{"lr": -1.0}], "stage 1: lr must be positive"),
    ([{"method_options": {"weights": False}}], "the last stage keeps the weights real"),
    ([{}, {"method_options": {"weights": False}}], "whose weights may only go from real"),
    ([{"method_options": {"weights": False}}, {"method_options": {"keep_downsample": False}}],
     r"swap the model differently \(react W32/A1 -> react W1/A1; keep_downsample: True -> False\)"),
])
def test_bad_stages_are_refused_with_what_a_stage_may_set(stages, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(method="react", stages=stages)


def test_a_w32a1_run_without_a_later_stage_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--method", "react", "--method-options", "weights=false", "--weights", "none",
                 "--output", str(out)]) == 2
    assert "weights=False (W32/A1) is a first stage: list it in `stages`" in capsys.readouterr().err
    assert not out.exists()


def _lrs(cfg: FinetuneConfig, steps_per_epoch: int) -> list[float]:
    from quantswap.train.loop import _scheduler, planned_steps

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = _scheduler(cfg, optimizer, steps_per_epoch)
    lrs = []
    for step in range(planned_steps(cfg, steps_per_epoch)):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("epochs", [1, 3])
def test_a_run_cut_by_max_steps_gets_the_whole_schedule_in_its_steps(epochs):
    # cosine to 0 over the T steps the run takes: lr_t = lr/2 * (1 + cos(pi t / T)), whatever the epochs say
    cut = _lrs(FinetuneConfig(epochs=epochs, max_steps=20, lr=1e-3, schedule="cosine", warmup_epochs=0), 78)
    expected = [0.5e-3 * (1 + math.cos(math.pi * t / 20)) for t in range(20)]
    assert cut == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # a run that max_steps does not cut keeps the schedule of its epochs exactly
    whole = _lrs(FinetuneConfig(epochs=1, max_steps=1000, lr=1e-3, schedule="cosine", warmup_epochs=0), 78)
    assert whole == _lrs(FinetuneConfig(epochs=1, lr=1e-3, schedule="cosine", warmup_epochs=0), 78)
    assert len(whole) == 78 and whole[39] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 39 / 78)))


def test_a_subset_is_taken_before_resizing_and_draws_the_same_samples():
    """Issue 29: ``--image-size`` resized the whole dataset before ``--train-subset`` (64 images at 224 px peaked
    at 8.3 GB). Held subsets give the same images, labels and augmentation as the whole set indexed."""
    from torch.utils.data import Subset

    from quantswap.data import InMemoryImages, _subset_indices

    images = torch.randint(0, 255, (50, 1, 28, 28), dtype=torch.uint8)
    targets = list(range(50))
    keep = _subset_indices(50, 12, seed=3)
    common = dict(size=40, mean=(0.5,), std=(0.5,), augment=True, seed=3)
    held = InMemoryImages(images, targets, indices=keep, **common)
    whole = Subset(InMemoryImages(images, targets, **common), keep)
    assert held.images.shape[0] == 12 and len(held) == len(whole) == 12
    for epoch in (0, 1):
        held.epoch = whole.dataset.epoch = epoch
        for i in range(12):
            x, y = held[i]
            torch.testing.assert_close(x, whole[i][0], rtol=0, atol=0)
            assert y == whole[i][1] == keep[i]


def test_an_image_size_that_cannot_fit_in_memory_is_refused_with_the_estimate(monkeypatch):
    import quantswap.data as data

    monkeypatch.setattr(data, "_available_memory", lambda: 2 * 10**9)
    with pytest.raises(ValueError, match=r"10,000 images of 1x2560x2560 px need about 72.2 GB in memory and 2.0 GB"):
        data.check_memory(10_000, 1, 2560)
    data.check_memory(64, 1, 256)  # 4 MB: fine


def test_a_float_runs_checkpoint_honours_the_umask(tmp_path):
    """Issue 29: the parent's model.safetensors was written 0600 (safetensors' own mode) under umask 022."""
    from torchvision.models import resnet18

    from quantswap.train.run_state import RunFolder

    old = os.umask(0o022)
    try:
        RunFolder(FinetuneConfig(method="none", weights="none", output=str(tmp_path))).save_model(resnet18(), {})
    finally:
        os.umask(old)
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("options, message", [
    (dict(decay_milestones="abc"), "decay_milestones is a list of epochs"),
    (dict(decay_milestones=[-5]), "decay_milestones is a list of epochs"),
    (dict(seed=10**23), r"seed must be in \[0, "),
    (dict(resume=True, overwrite=True), "pass one of them"),
    (dict(method="irnet", method_options={"t_min": "abc"}), r"t_min must be a number \(method 'irnet'\), got 'abc'"),
    (dict(method="react", stages=[{"name": ["a"]}]), r"stage 1: name is a text, got \['a'\]"),
])
def test_the_break_it_runs_weak_options_get_one_clear_line(options, message):
    """Issue 29's WEAK list: each of these used to pass, or fail later with an internal message."""
    with pytest.raises((ValueError, TypeError), match=message):
        FinetuneConfig(**options)


def test_a_recipe_that_is_a_folder_is_named_as_one(tmp_path):
    with pytest.raises(ValueError, match="is a folder; pass a recipe file"):
        load_recipe(tmp_path)


def test_fewer_classes_than_the_data_has_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--weights", "none", "--num-classes", "7", "--train-subset", "64", "--val-subset", "64",
                 "--output", str(out)]) == 2
    assert "--num-classes 7, but fashion-mnist has 10 classes" in capsys.readouterr().err and not out.exists()


def test_a_run_without_a_terminal_logs_its_progress(tmp_path, caplog):
    """Issue 29: ``make demo`` piped to a log showed nothing for two minutes (tqdm draws no bar off a terminal)."""
    import logging

    from quantswap import finetune

    with caplog.at_level(logging.INFO, logger="quantswap"):
        finetune(FinetuneConfig(weights="none", train_subset=320, val_subset=32, batch_size=16, output=str(tmp_path)))
    lines = [r.getMessage() for r in caplog.records if "step" in r.getMessage()]
    assert lines and lines[0].startswith("epoch 1/1, step 10/20: loss ") and "img/s, epoch ends in" in lines[0]


def test_the_card_states_the_steps_and_images_trained_and_what_top1_was_measured_on(tmp_path):
    """Issue 29: the card said "20 epochs" after ``--max-steps 10``, and its top-1 came from a validation
    subset without saying so."""
    from quantswap import finetune

    finetune(FinetuneConfig(weights="none", train_subset=256, val_subset=64, batch_size=16, epochs=20, max_steps=10,
                            output=str(tmp_path)))
    metrics = json.loads((tmp_path / "model" / "config.json").read_text())["metrics"]
    assert (metrics["steps"], metrics["train_images"], metrics["val_images"]) == (10, 160, 64)
    assert "20 epochs (max_steps 10)" in metrics["training"]
    card = (tmp_path / "model" / "README.md").read_text()
    assert "10 optimizer steps on 160 training images" in card and "top-1 on fashion-mnist (64 test images)" in card
    # issue 28: the normalization a deployed model needs, as trained, in config.json and the card
    data = json.loads((tmp_path / "model" / "config.json").read_text())["pretrained_cfg"]
    assert data["input_size"] == [3, 32, 32] and data["mean"] == [0.286] * 3 and data["std"] == [0.353] * 3
    assert "preprocessing (as trained; timm data config) | input_size=[3, 32, 32]" in card


def test_weights_may_name_a_float_runs_folder_or_a_runs_last_checkpoint(tmp_path):
    """Issue 29: ``--weights`` accepts a float run's folder, its ``model/`` and a run's ``last.pt``, so a
    finished run can be continued from its weights (and a float run of quantswap 0.1, whose weights lay
    beside ``last.pt``); a quantized checkpoint folder is refused with what to do instead."""
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    from quantswap.train.parent import load_weights, weights_file

    model = resnet18(num_classes=10)
    run, old = tmp_path / "parent", tmp_path / "old-parent"
    quantswap.save_pretrained(model, run / "model")
    torch.save({"model": model.state_dict(), "state": {"epoch": 1}}, run / "last.pt")
    old.mkdir()
    save_file(model.state_dict(), old / "model.safetensors")
    assert weights_file(run) == weights_file(run / "model") == run / "model" / "model.safetensors"
    assert weights_file(old) == old / "model.safetensors"
    for source in (run, run / "model", run / "last.pt", old):
        fresh = resnet18(num_classes=10)
        load_weights(fresh, source)
        assert torch.equal(fresh.conv1.weight, model.conv1.weight)
    binary = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    quantswap.save_pretrained(binary, tmp_path / "q" / "model")
    with pytest.raises(ValueError, match="is a quantized checkpoint.*--resume"):
        weights_file(tmp_path / "q")


def test_a_dataset_that_needs_a_download_offline_says_which_and_where_to_place_it(tmp_path, monkeypatch):
    from torchvision import datasets

    from quantswap.data import build_datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(datasets.CIFAR10, "__init__", offline)
    with pytest.raises(FileNotFoundError, match=r"cifar10 is not in .*cifar-10-batches-py and could not be downloaded.*"
                                                r"needs the internet once\. Place the extracted"):
        build_datasets("cifar10", root=tmp_path)


def test_help_describes_every_option_with_its_default_once(capsys):
    """Issue 29: the top-level help had no description, options had no help text, and defaults were printed
    twice ("(default: the method's own) (default: None)") or untrue (--image-size None)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Binarize or ternarize a pretrained PyTorch vision model" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: the method's own) (default" not in text
    assert "--image-size IMAGE_SIZE input size in px (default: 32 for fashion-mnist and cifar, 224 for an image " \
           "folder)" in text
    import dataclasses

    from quantswap.cli.finetune import HELP, RECIPE_ONLY

    undescribed = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in HELP and f.name not in RECIPE_ONLY]
    assert undescribed == []


def test_metrics_hold_a_training_curve_and_plot_draws_it(tmp_path, capsys):
    """Issue 29: a row every tenth of an epoch in metrics.jsonl (loss, lr, images/s) and ``quantswap plot RUN``."""
    from quantswap import finetune
    from quantswap.cli.plot import read_curves

    run = tmp_path / "run"
    finetune(FinetuneConfig(weights="none", train_subset=320, val_subset=32, batch_size=16, output=str(run)))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r.get("kind") == "step"] == [10, 20] and "val_top1" in rows[-1]
    losses, top1 = read_curves(run)
    assert [s for s, _ in losses] == [10, 20] and [s for s, _ in top1] == [20]
    assert main(["plot", str(run), "--output", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path), "--output", str(tmp_path / "d.png")]) == 2
    assert "is not a run folder (no metrics.jsonl)" in capsys.readouterr().err


def test_a_resume_forgets_the_step_rows_after_its_checkpoint(tmp_path):
    """A kill after a step row but before the checkpoint that holds it: the resumed run writes that row again,
    so the one already there goes (as an epoch row after ``last.pt`` does)."""
    from quantswap.train.run_state import RunFolder, RunState

    rows = [{"kind": "step", "epoch": 1, "step": 10}, {"epoch": 1, "step": 16, "val_top1": 50.0},
            {"kind": "step", "epoch": 2, "step": 20}, {"kind": "step", "epoch": 2, "step": 30}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = RunFolder(FinetuneConfig(weights="none", output=str(tmp_path)))
    folder._forget_rows_after(RunState(stage=0, epoch=1, step_in_epoch=4, global_step=20))
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert kept == rows[:3]
