"""``quantswap push`` and ``quantswap download``: a checkpoint folder to and from the Hugging Face Hub."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    push = sub.add_parser(
        "push", help="upload a checkpoint folder to the Hugging Face Hub in one commit",
        epilog="examples:\n  quantswap push out/resnet18-irnet my-org/resnet18-irnet --private\n"
               "  quantswap push out/resnet18-irnet my-org/resnet18-irnet --onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("folder", help="a folder written by quantswap.save_pretrained (or quantswap finetune)")
    push.add_argument("repo_id", metavar="ORG/NAME", help="the model repo; created when missing")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to commit to (created when missing)")
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one or HF_TOKEN)")
    push.add_argument("--regenerate-card", action="store_true",
                      help="replace a README.md you edited in the folder with a fresh model card")
    push.add_argument("--onnx", action="store_true",
                      help="also upload model.onnx (2-bit weights; needs pip install 'quantswap[onnx]')")
    push.set_defaults(run=run_push)

    dl = sub.add_parser(
        "download", help="download a checkpoint from the Hub into the local cache and print its folder",
        epilog="example:\n  quantswap download my-org/resnet18-irnet --revision v1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dl.add_argument("repo_id", metavar="ORG/NAME")
    dl.add_argument("--revision", default=None, help="branch, tag or commit sha (default: main)")
    dl.add_argument("--cache-dir", default=None, help="Hub cache folder (default: huggingface_hub's)")
    dl.add_argument("--local-files-only", action="store_true", help="use the cache only, make no request")
    dl.add_argument("--token", default=None, help="Hub token for private repos")
    dl.set_defaults(run=run_download)


def run_push(args: argparse.Namespace) -> int:
    from quantswap.hub import push_to_hub

    info = push_to_hub(args.folder, args.repo_id, private=args.private, revision=args.revision,
                       commit_message=args.message, token=args.token, regenerate_card=args.regenerate_card,
                       onnx=args.onnx)
    print(f"pushed {args.folder} to {args.repo_id}: {info.commit_url}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from quantswap.hub import download

    print(download(args.repo_id, revision=args.revision, cache_dir=args.cache_dir,
                   local_files_only=args.local_files_only, token=args.token))
    return 0
