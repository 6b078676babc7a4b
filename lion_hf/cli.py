"""The `lion-hf` command line."""

from __future__ import annotations

import argparse
import importlib.util
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
    print("attention     what computes each form here, in the order attention_backend='auto' tries them:")
    for device, dtype in _probe_settings(torch):
        print(f"  on {device} {str(dtype).removeprefix('torch.')}:")
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
    settings = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        settings += [("cuda", torch.bfloat16), ("cuda", torch.float32)]
    return settings


def _implementations_for(device: str, dtype) -> list[tuple[str, str, str | None]]:
    """Every entry of the operator's dispatch table with why it would not run head-dim-64 inputs (or None)."""
    import torch

    from lion_hf.modeling.lion_attention import IMPLEMENTATIONS

    q = torch.zeros(1, 1, 16, 64, device=device, dtype=dtype)
    options = dict(chunk_size=64, normalize=False, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
    rows = []
    for implementation in IMPLEMENTATIONS:
        reason = implementation.unsupported(q, q, q, None, None, **options)
        rows.append((implementation.form, implementation.backend, reason))
    return rows


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
