"""The `lion-hf` command line."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys


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
    print(f"attention     forms: {', '.join(lion_hf.ATTENTION_FORMS)}; implementations run on:")
    cases = [("cpu", torch.float32)] + [("cuda", dtype) for dtype in (torch.bfloat16, torch.float16, torch.float32)]
    for device, dtype in cases:
        runs = (_implementation(form, device, dtype) for form in lion_hf.ATTENTION_FORMS)
        where = f"{device} {str(dtype).removeprefix('torch.')}"
        print(f"  {where:14s}{'; '.join(f'{form}: {what}' for form, what in zip(lion_hf.ATTENTION_FORMS, runs))}")
    return 0


def _implementation(form: str, device: str, dtype) -> str:
    """The backend that runs ``form`` for (batch 1, 1 head, 8 tokens, head dim 64) inputs on ``device``, and why
    the implementations before it in the dispatch table cannot."""
    import torch

    from lion_hf.modeling.lion_attention import BACKEND_ENVIRONMENT_VARIABLE, IMPLEMENTATIONS, select_implementation

    if device == "cuda" and not torch.cuda.is_available():
        # Fake tensors stand for CUDA ones on a machine without a GPU: the dispatch only reads their metadata.
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            q = torch.empty(1, 1, 8, 64, device=device, dtype=dtype)
    else:
        q = torch.empty(1, 1, 8, 64, device=device, dtype=dtype)
    options = dict(chunk_size=64, normalize=True, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
    chosen = select_implementation(form, "auto", q, q, q, None, None, **options)
    skipped = []
    for implementation in IMPLEMENTATIONS:
        if implementation is chosen:
            break
        if implementation.form == form:
            reason = implementation.unsupported(q, q, q, None, None, **options)
            forced = f"${BACKEND_ENVIRONMENT_VARIABLE}={os.environ.get(BACKEND_ENVIRONMENT_VARIABLE)}"
            skipped.append(f"{implementation.backend}: {reason or 'not chosen, ' + forced}")
    return chosen.backend + (f" ({'; '.join(skipped)})" if skipped else "")


def _convert(args: argparse.Namespace) -> int:
    # Imported here: conversion builds on lion_hf, and `lion-hf info` should not pay for it.
    from lion_hf.conversion.cli import main as convert_main

    return convert_main(args.arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lion-hf", description="LION bidirectional linear-attention models for the Hugging Face stack."
    )
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
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
