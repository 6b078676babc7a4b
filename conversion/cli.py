"""``lion-hf convert {vision,mlm}`` (also ``python -m lion_hf.conversion {vision,mlm}``)."""

from __future__ import annotations

import argparse
import sys
import traceback

from transformers.utils import logging as transformers_logging

from . import mlm, vision
from .verify import VerificationError

# Exit statuses: 1 the converted model does not reproduce the reference outputs; 2 the conversion was refused;
# 3 it failed in a way it does not foresee (with the traceback), so that 1 always means a failed verification.
EXIT_VERIFICATION_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNEXPECTED = 3


def _shared_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the original checkpoint")
    parser.add_argument("output", help="the folder to write (must not exist or be empty, unless --overwrite)")
    parser.add_argument(
        "--verify",
        metavar="IO",
        help="reference io .safetensors (inputs and the original's outputs) to check in every attention form",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-5, help="largest max-abs difference accepted by --verify (default 1e-5)"
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle everything in the checkpoint (can run code stored in it): only for trusted files",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser(prog: str = "lion-hf convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an original LION checkpoint into a Hugging Face folder (config.json with auto_map, "
        "model.safetensors, the remote code, a tokenizer or image processor and a model card).",
    )
    formats = parser.add_subparsers(dest="checkpoint_format", metavar="FORMAT", required=True)
    vision_parser = formats.add_parser("vision", help="DeiT-based image classifier (.pth with model/epoch/args)")
    _shared_arguments(vision_parser)
    vision.add_arguments(vision_parser)
    mlm_parser = formats.add_parser("mlm", help="M2-BERT/Composer MLM or GLUE checkpoint (.pt)")
    _shared_arguments(mlm_parser)
    mlm.add_arguments(mlm_parser)
    return parser


def _convert(args: argparse.Namespace):
    shared = dict(
        verify=args.verify,
        tolerance=args.tolerance,
        trust_checkpoint=args.trust_checkpoint,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.checkpoint_format == "vision":
        return vision.convert_vision(
            args.checkpoint,
            args.output,
            original_config=args.original_config,
            overrides=vision.overrides_from(args),
            **shared,
        )
    return mlm.convert_mlm(
        args.checkpoint,
        args.output,
        bert_config_json=args.bert_config,
        overrides=mlm.overrides_from(args),
        task=args.task,
        tokenizer=args.tokenizer,
        **shared,
    )


def main(argv: list[str] | None = None, prog: str = "lion-hf convert") -> int:
    args = build_parser(prog).parse_args(argv)
    # transformers' own bars (writing and loading the weights) follow --no-progress too, for this call only.
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    if args.no_progress:
        transformers_logging.disable_progress_bar()
    try:
        result = _convert(args)
    except VerificationError as error:
        print(error.report.to_text())
        print(
            f"error: nothing written to {args.output}: the converted model does not reproduce the reference.",
            file=sys.stderr,
        )
        return EXIT_VERIFICATION_FAILED
    # Bad checkpoints, arguments and folders (unsafe pickles and weight mismatches are ValueErrors too).
    except (ValueError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception:
        traceback.print_exc()
        print(f"error: nothing written to {args.output}: the conversion failed unexpectedly (above).", file=sys.stderr)
        return EXIT_UNEXPECTED
    finally:
        if transformers_bars:
            transformers_logging.enable_progress_bar()
    if result.report is not None:
        print(result.report.to_text())
    print(f"wrote {type(result.model).__name__} to {result.output}")
    return 0
