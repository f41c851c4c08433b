"""The Hub for real: the unmodified huggingface_hub client against tests/minihub.py on 127.0.0.1."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi
from torchvision.models import resnet18

import quantswap
from quantswap.checkpoint import CheckpointError, CheckpointNotFoundError
from quantswap.cli import main

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def pushed(minihub, tmp_path_factory):
    """A ternary ResNet-18 pushed to testorg/r18-ternary: main, then a second commit on branch v2."""
    model = quantswap.ternarize(resnet18(num_classes=10), expansion=2).eval()
    first = quantswap.push_to_hub(model, "testorg/r18-ternary", fp_dtype="float16")
    other = quantswap.binarize(resnet18(num_classes=10), method="irnet").eval()
    folder = tmp_path_factory.mktemp("v2") / "r18-irnet"
    quantswap.save_pretrained(other, folder)
    second = quantswap.push_to_hub(folder, "testorg/r18-ternary", revision="v2", commit_message="irnet on v2")
    return {"model": model, "first": first, "other": other, "second": second}


def _reference(model, dtype=torch.float16):
    ref = quantswap.freeze(model)
    ref.load_state_dict({k: v.to(dtype).float() if v.is_floating_point() and not k.endswith(".scale") else v
                         for k, v in ref.state_dict().items()})
    return ref


def test_push_creates_the_repo_in_one_commit_with_the_three_files(pushed, minihub):
    api = HfApi()
    files = api.list_repo_files("testorg/r18-ternary")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    commits = api.list_repo_commits("testorg/r18-ternary")
    assert commits[0].commit_id == pushed["first"].oid
    card = (api.hf_hub_download("testorg/r18-ternary", "README.md"))
    assert 'quantswap.from_pretrained("testorg/r18-ternary")' in open(card).read()


def test_from_pretrained_by_repo_id_branch_and_sha(pushed, tmp_path):
    model, other = pushed["model"], pushed["other"]
    expected = _reference(model)(X)
    by_id = quantswap.from_pretrained("testorg/r18-ternary", cache_dir=tmp_path / "c1")
    assert torch.equal(by_id(X), expected)
    by_branch = quantswap.from_pretrained("testorg/r18-ternary", revision="v2", cache_dir=tmp_path / "c2")
    assert torch.equal(by_branch(X), other(X))
    by_sha = quantswap.from_pretrained("testorg/r18-ternary", revision=pushed["first"].oid, cache_dir=tmp_path / "c3")
    assert torch.equal(by_sha(X), expected)


def test_offline_reuse_of_the_cache_makes_no_request(pushed, minihub, tmp_path):
    quantswap.download("testorg/r18-ternary", cache_dir=tmp_path)
    before = len(minihub.request_log)
    model = quantswap.from_pretrained("testorg/r18-ternary", cache_dir=tmp_path, local_files_only=True)
    assert len(minihub.request_log) == before
    assert torch.equal(model(X), _reference(pushed["model"])(X))


def test_offline_process_with_hf_hub_offline(pushed, minihub, tmp_path):
    quantswap.download("testorg/r18-ternary", cache_dir=tmp_path)
    before = len(minihub.request_log)
    script = textwrap.dedent(f"""
        import torch, quantswap
        m = quantswap.from_pretrained("testorg/r18-ternary", cache_dir={str(tmp_path)!r})
        print(type(m).__name__, m(torch.zeros(1, 3, 32, 32)).shape)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 10])" in out.stdout and len(minihub.request_log) == before


def test_missing_repo_revision_and_file(pushed, minihub, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no model repo 'testorg/nothing-here'"):
        quantswap.from_pretrained("testorg/nothing-here", cache_dir=tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="no revision 'v404'"):
        quantswap.from_pretrained("testorg/r18-ternary", revision="v404", cache_dir=tmp_path)
    api = HfApi()
    api.create_repo("testorg/not-quantswap", exist_ok=True)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="testorg/not-quantswap")
    api.upload_file(path_or_fileobj=b"\x80\x04pickle", path_in_repo="pytorch_model.bin", repo_id="testorg/not-quantswap")
    with pytest.raises(CheckpointNotFoundError, match="has no file model.safetensors"):
        quantswap.from_pretrained("testorg/not-quantswap", cache_dir=tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="not in the local cache"):
        quantswap.from_pretrained("testorg/r18-ternary", cache_dir=tmp_path / "empty", local_files_only=True)


def test_push_refuses_what_is_not_a_checkpoint(minihub, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint folder"):
        quantswap.push_to_hub(tmp_path / "missing", "testorg/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        quantswap.push_to_hub(tmp_path / "empty", "testorg/x")
    with pytest.raises(ValueError, match="org/name"):
        quantswap.push_to_hub(tmp_path / "empty", "no-slash")


def test_cli_push_and_download(minihub, tmp_path, capsys):
    folder = tmp_path / "r18-xnor"
    model = quantswap.binarize(resnet18(num_classes=10), method="xnor").eval()
    quantswap.save_pretrained(model, folder)
    assert main(["push", str(folder), "testorg/r18-xnor", "--revision", "dev"]) == 0
    assert "testorg/r18-xnor" in capsys.readouterr().out
    assert main(["download", "testorg/r18-xnor", "--revision", "dev", "--cache-dir", str(tmp_path / "c")]) == 0
    snapshot = capsys.readouterr().out.strip()
    assert sorted(os.listdir(snapshot)) == ["README.md", "config.json", "model.safetensors"]
    assert torch.equal(quantswap.from_pretrained(snapshot, backend="float")(X), model(X))
    assert main(["download", "testorg/does-not-exist", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "no model repo 'testorg/does-not-exist'" in capsys.readouterr().err


def test_push_keeps_a_card_its_user_edited_unless_told_to_regenerate(minihub, tmp_path):
    """Issue 11: a README.md edited in the checkpoint folder is uploaded as it is; an untouched one is
    rendered again with the repo id; --regenerate-card replaces an edited one."""
    folder = tmp_path / "r18-xnor"
    quantswap.save_pretrained(quantswap.binarize(resnet18(num_classes=10), method="xnor").eval(), folder)
    api = HfApi()

    def remote_card(repo):
        return open(api.hf_hub_download(repo, "README.md", force_download=True)).read()

    quantswap.push_to_hub(folder, "testorg/card-untouched")
    assert 'quantswap.from_pretrained("testorg/card-untouched")' in remote_card("testorg/card-untouched")
    edited = (folder / "README.md").read_text().replace("# r18-xnor", "# r18-xnor\n\nMy own notes.")
    (folder / "README.md").write_text(edited)
    quantswap.push_to_hub(folder, "testorg/card-edited")
    assert remote_card("testorg/card-edited") == edited
    assert main(["push", str(folder), "testorg/card-edited", "--regenerate-card"]) == 0
    fresh = remote_card("testorg/card-edited")
    assert "My own notes." not in fresh and 'quantswap.from_pretrained("testorg/card-edited")' in fresh
