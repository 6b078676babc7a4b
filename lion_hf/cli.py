"""The `lion-hf` command line."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys

from lion_hf import __version__
from lion_hf.cards import CODE_LICENSE, Evaluation, Provenance
from lion_hf.export import DEFAULT_MAX_SHARD_SIZE, export_folder
from lion_hf.hub import push_folder
from lion_hf.load_check import LoadCheckError

# Exit statuses of export and push (convert has its own, the same where they overlap): 2 refused input or no
# command; 1 a push refused because the folder does not load.
EXIT_USAGE = 2
EXIT_LOAD_CHECK_FAILED = 1


def _info(args: argparse.Namespace) -> int:
    import torch
    import transformers

    import lion_hf

    print(f"lion-hf       {lion_hf.__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__}")
    print(f"transformers  {transformers.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"cuda          {torch.version.cuda} ({names})")
    else:
        print("cuda          not available (CPU only)")
    triton = "installed" if importlib.util.find_spec("triton") is not None else "not installed"
    print(f"triton        {triton}")
    print("attention     what computes each form (and the feature maps) here, in the order attention_backend='auto' "
          "tries them:")
    for device, dtype in _probe_settings(torch):
        fake = " (no GPU here: from fake CUDA tensors)" if device == "cuda" and not torch.cuda.is_available() else ""
        print(f"  on {device} {str(dtype).removeprefix('torch.')}{fake}:")
        chosen = set()
        for form, backend, reason in _implementations_for(device, dtype):
            if reason is not None:
                status = f"cannot run: {reason}"
            elif form in chosen:
                status = "can run (with attention_backend=" + repr(backend) + ")"
            else:
                chosen.add(form)
                status = "runs"
            print(f"    {form:<10} {backend:<8} {status}")
    return 0


def _probe_settings(torch) -> list[tuple[str, object]]:
    # CUDA too where there is no GPU (judged from fake tensors), for what a GPU machine with this install would run.
    return [("cpu", torch.float32)] + [("cuda", dtype) for dtype in (torch.bfloat16, torch.float16, torch.float32)]


def _implementations_for(device: str, dtype) -> list[tuple[str, str, str | None]]:
    """Every entry of the operator's dispatch table with why it would not run head-dim-64 inputs (or None)."""
    import torch

    from lion_hf.modeling.lion_attention import IMPLEMENTATIONS, fused_feature_maps_unsupported

    if device == "cuda" and not torch.cuda.is_available():
        # The dispatch reads only the inputs' device, dtype and shape, which fake tensors have without a GPU.
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            q = torch.empty(1, 1, 16, 64, device=device, dtype=dtype)
    else:
        q = torch.zeros(1, 1, 16, 64, device=device, dtype=dtype)
    options = dict(chunk_size=64, normalize=False, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
    rows = []
    for implementation in IMPLEMENTATIONS:
        reason = implementation.unsupported(q, q, q, None, None, **options)
        rows.append((implementation.form, implementation.backend, reason))
    # The feature maps of queries and keys (silu_shift_l2 standing for both), chosen by the same backend setting.
    rows += [("features", "triton", fused_feature_maps_unsupported("silu_shift_l2", q, q)), ("features", "pytorch", None)]
    return rows


def _convert(args: argparse.Namespace) -> int:
    # Imported here: conversion builds on lion_hf, and `lion-hf info` should not pay for it.
    from lion_hf.conversion.cli import main as convert_main

    return convert_main(args.arguments)


def _export(args: argparse.Namespace) -> int:
    provenance = Provenance(
        command=args.command_line,
        data=args.data,
        datasets=args.dataset,
        base_model=args.base_model,
        license=args.license,
    )
    evaluation = None
    if args.eval_dataset:
        evaluation = Evaluation(args.eval_dataset, args.eval_dataset_name, args.eval_dataset_config, args.eval_split)
    result = export_folder(
        args.src,
        args.dst,
        provenance=provenance,
        metrics=args.metrics,
        evaluation=evaluation,
        repo_id=args.repo_id,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
        progress=not args.no_progress,
    )
    print(f"wrote {type(result.model).__name__} to {result.folder}: {', '.join(result.files)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        check=not args.no_check,
    )
    return 0


def _export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("src", help="a folder with a LION model: a training run's output or checkpoint, a converted "
                        "or exported folder")  # fmt: skip
    export.add_argument("dst", help="the folder to write (must not exist or be empty, unless --overwrite)")
    card = export.add_argument_group("model card")
    card.add_argument("--metrics", metavar="JSON", help="metrics of the run, as transformers' scripts write them "
                      "(eval_results.json / all_results.json: eval_accuracy, eval_loss, perplexity, ...)")  # fmt: skip
    card.add_argument("--eval-dataset", metavar="ID", help="Hub id of the dataset the metrics were measured on")
    card.add_argument("--eval-dataset-name", metavar="NAME", help="its readable name (default: the id)")
    card.add_argument("--eval-dataset-config", metavar="CONFIG", help="its configuration (e.g. sst2 of glue)")
    card.add_argument("--eval-split", metavar="SPLIT", help="its split (e.g. validation)")
    card.add_argument("--dataset", metavar="ID", action="append", default=[], help="Hub id of a training dataset "
                      "(repeatable)")  # fmt: skip
    card.add_argument("--data", metavar="TEXT", help="the training data, in words")
    card.add_argument("--command", dest="command_line", metavar="TEXT", help="the command that trained the weights")
    card.add_argument("--base-model", metavar="ID", help="Hub id of the model the weights were fine-tuned from")
    card.add_argument("--license", default=CODE_LICENSE, help=f"Hub licence id of the weights (default {CODE_LICENSE})")
    card.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub id the card's usage snippet loads (default: the "
                      "folder's name; lion-hf push sets it)")  # fmt: skip
    export.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="split larger weights into shards "
                        f"with an index (default {DEFAULT_MAX_SHARD_SIZE})")  # fmt: skip
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty destination folder")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")


def _push_arguments(push: argparse.ArgumentParser) -> None:
    push.add_argument("folder", help="an exported folder (lion-hf export, lion-hf convert, the training scripts)")
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub model repo, namespace/name")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its "
                      "visibility)")  # fmt: skip
    push.add_argument("--revision", metavar="BRANCH", help="push to this branch (created when missing)")
    push.add_argument("--commit-message", metavar="TEXT", help="the commit's message")
    push.add_argument("--dry-run", action="store_true", help="print the files with their sizes and the card; "
                      "contact nothing")  # fmt: skip
    push.add_argument("--no-check", action="store_true", help="skip loading the folder in a fresh process without "
                      "lion_hf first")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lion-hf",
        description="LION bidirectional linear-attention models for the Hugging Face stack. Without a command, "
        "prints this help and exits with status 2.",
    )
    parser.add_argument("--version", action="version", version=f"lion-hf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="versions, devices and available attention backends")
    info.set_defaults(run=_info)
    convert = commands.add_parser(
        "convert",
        help="original LION checkpoints -> Hugging Face folders (`lion-hf convert {vision,mlm} --help`)",
        add_help=False,
    )
    # Everything after `convert` belongs to the conversion's own parser.
    convert.add_argument("arguments", nargs=argparse.REMAINDER)
    convert.set_defaults(run=_convert)
    export = commands.add_parser("export", help="a LION model folder -> a Hub-ready folder with its model card")
    _export_arguments(export)
    export.set_defaults(run=_export)
    push = commands.add_parser("push", help="an exported folder -> a Hub model repo")
    _push_arguments(push)
    push.set_defaults(run=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "convert":
        # Options before the format (e.g. `convert --help`) are not captured by the remainder.
        args.arguments = extra + args.arguments
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    if args.command == "convert":
        return args.run(args)
    try:
        return args.run(args)
    except LoadCheckError as error:
        print(f"error: not pushed: {error}", file=sys.stderr)
        return EXIT_LOAD_CHECK_FAILED
    # Bad folders, metrics files, repo ids, a missing token: the message alone.
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
