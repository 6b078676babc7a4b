"""Pretrain a small LION masked language model from scratch, offline, and use it as a Hub checkpoint.

The corpus is the docstrings of the Python standard library, real English that every Python installation
carries. The script trains a WordPiece tokenizer on it with `tokenizers`, pretrains a `LionForMaskedLM` with
`transformers.Trainer`, exports a Hub-ready folder with `lion_hf.export_folder` (safetensors, config with
`auto_map`, the model's own code, the tokenizer, a model card with the held-out loss), and then, in a fresh Python process that does not import `lion_hf`, reloads the folder with
`AutoModelForMaskedLM.from_pretrained(..., trust_remote_code=True)`, prints `fill-mask` predictions on held-out
docstring sentences, and the largest difference between the three attention forms.

    python examples/demo_mlm.py                        # LION-S, about 3 minutes on 2 CPU cores
    python examples/demo_mlm.py --variant d --steps 600 --output-dir outputs/lion-d
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import random
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
# Parts of the standard library that are not prose about the library itself (tests, demos, bundled tools).
SKIPPED_PARTS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages", "__pycache__"}
HELD_OUT_FRACTION = 0.05
HELD_OUT_FILE = "held_out.txt"
MIN_PARAGRAPHS = 1000


# ----------------------------------------------------------------------------------------------- corpus


def stdlib_docstrings(root: Path) -> list[str]:
    """Every module, class and function docstring of the standard library's own source files under ``root``."""
    docstrings = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are deliberately not valid Python 3 or not UTF-8
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text:
                    docstrings.append(text)
    return docstrings


def prose_paragraphs(docstrings: list[str], min_words: int = 6) -> list[str]:
    """Blank-line separated paragraphs with their whitespace collapsed; code examples and tables dropped."""
    seen, paragraphs = set(), []
    for text in docstrings:
        for block in re.split(r"\n\s*\n", text):
            if re.search(r"^\s*(>>>|\.\.\.|[-=+*]{4,})", block, flags=re.M):
                continue
            paragraph = " ".join(block.split())
            if len(paragraph.split()) >= min_words and paragraph not in seen:
                seen.add(paragraph)
                paragraphs.append(paragraph)
    return paragraphs


def split_held_out(paragraphs: list[str], seed: int) -> tuple[list[str], list[str]]:
    shuffled = paragraphs[:]
    random.Random(seed).shuffle(shuffled)
    cut = max(1, int(len(shuffled) * HELD_OUT_FRACTION))
    return shuffled[cut:], shuffled[:cut]


# ----------------------------------------------------------------------------------------------- training


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """An uncased BERT-style WordPiece tokenizer trained on ``texts``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = (tokenizer.token_to_id(SPECIAL_TOKENS[name]) for name in ("cls_token", "sep_token"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length, **SPECIAL_TOKENS)


def packed_examples(tokenizer, texts: list[str], length: int) -> list[dict]:
    """The texts' tokens run together and cut into ``[CLS] ... [SEP]`` blocks of ``length`` tokens."""
    # The backend tokenizer: the paragraphs are longer than the model's length before they are cut.
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    stream = [token for encoding in encodings for token in encoding.ids]
    body = length - 2
    return [
        {"input_ids": [tokenizer.cls_token_id, *stream[start : start + body], tokenizer.sep_token_id]}
        for start in range(0, len(stream) - body + 1, body)
    ]


def pretrain(args: argparse.Namespace) -> None:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    import lion_hf

    set_seed(args.seed)
    started = time.perf_counter()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paragraphs = prose_paragraphs(stdlib_docstrings(stdlib))
    if len(paragraphs) < MIN_PARAGRAPHS:
        raise SystemExit(
            f"Found only {len(paragraphs)} docstring paragraphs under {stdlib}; the demo "
            f"needs the standard library's .py sources (at least {MIN_PARAGRAPHS} paragraphs)."
        )
    train_texts, held_out = split_held_out(paragraphs, args.seed)
    print(f"corpus: {len(train_texts)} training and {len(held_out)} held-out docstring paragraphs "
          f"from {stdlib}")
    tokenizer = train_tokenizer(train_texts, args.vocab_size, args.seq_len)
    train_set = packed_examples(tokenizer, train_texts, args.seq_len)
    eval_set = packed_examples(tokenizer, held_out, args.seq_len)
    print(f"tokenizer: WordPiece, {len(tokenizer)} tokens; {len(train_set)} training and {len(eval_set)} "
          f"held-out blocks of {args.seq_len} tokens")

    config = lion_hf.LionConfig(
        variant=args.variant,
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        max_position_embeddings=args.seq_len,
        pad_token_id=tokenizer.pad_token_id,
        chunk_size=16,
    )
    model = lion_hf.LionForMaskedLM(config)
    print(f"model: LION-{args.variant.upper()} LionForMaskedLM, {model.num_parameters() / 1e6:.2f}M parameters")

    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, args.steps // 10),
        weight_decay=0.01,
        lr_scheduler_type="linear",
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        dataloader_drop_last=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=args.seed)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set[:256],
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    # As transformers' run_mlm.py reports it.
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    print(f"held-out masked-token loss {metrics['eval_loss']:.3f} (perplexity {metrics['perplexity']:.1f})")

    folder = args.output_dir / "model"
    # The project's one export path: config.json with auto_map, the modeling files, model.safetensors, the
    # tokenizer and a model card: everything transformers needs to load it without lion_hf, and a Hub user to trust it.
    lion_hf.export_folder(
        model,
        folder,
        tokenizer=tokenizer,
        metrics=metrics,
        provenance=lion_hf.Provenance(
            command="python examples/demo_mlm.py " + " ".join(sys.argv[1:]),
            data=f"docstrings of the Python {sys.version_info.major}.{sys.version_info.minor} standard library "
            f"({len(train_texts)} paragraphs; {len(held_out)} more held out for the evaluation), with a WordPiece "
            f"tokenizer of {len(tokenizer)} tokens trained on them.",
            limitations=[
                f"A demo: {args.steps} optimizer steps of a model of {model.num_parameters():,} parameters on a "
                "small corpus; it mostly predicts frequent words."
            ],
        ),
        overwrite=True,
        progress=False,
    )
    (args.output_dir / HELD_OUT_FILE).write_text("\n".join(held_out) + "\n", encoding="utf-8")
    print(f"saved {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))}) "
          f"after {time.perf_counter() - started:.0f} s")


# ------------------------------------------------------------------------------------- the fresh process


def fill_mask_prompts(tokenizer, sentences: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    """Held-out sentences with one whole-word vocabulary word replaced by the mask token."""
    rng = random.Random(seed)
    prompts = []
    for sentence in sentences:
        words = sentence.split()
        candidates = [
            i for i, word in enumerate(words)
            if word.isalpha() and word.islower() and len(word) > 3 and len(tokenizer.tokenize(word)) == 1
        ]  # fmt: skip
        if 8 <= len(words) <= 20 and candidates:
            i = rng.choice(candidates)
            prompts.append((" ".join(words[:i] + [tokenizer.mask_token] + words[i + 1 :]), words[i]))
        if len(prompts) == count:
            break
    return prompts


def inspect_folder(output_dir: Path, seed: int) -> None:
    """Load the saved folder as any transformers user would (no lion_hf) and show what it does."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    folder = output_dir / "model"
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    # transformers reads config.json to pick a tokenizer, and that config names the folder's code.
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    fill_mask = pipeline("fill-mask", model=model, tokenizer=tokenizer, trust_remote_code=True)
    print(f"loaded {type(model).__name__} from {type(model).__module__} (the folder's own code; "
          f"lion_hf imported: {'lion_hf' in sys.modules})")

    held_out = (output_dir / HELD_OUT_FILE).read_text(encoding="utf-8").splitlines()
    sentences = [sentence for paragraph in held_out for sentence in paragraph.split(". ")]
    hits = 0
    prompts = fill_mask_prompts(tokenizer, sentences, count=8, seed=seed)
    print("\nfill-mask on held-out docstring sentences (top 3; * marks the hidden word):")
    for text, answer in prompts:
        top = fill_mask(text, top_k=3)
        hits += any(p["token_str"] == answer for p in top)
        guesses = ", ".join(f"{'*' if p['token_str'] == answer else ''}{p['token_str']} {p['score']:.2f}" for p in top)
        print(f"  {text}\n      hidden: {answer!r}; predicted: {guesses}")
    print(f"  hidden word in the top 3: {hits} of {len(prompts)}")

    batch = tokenizer(sentences[:16], padding=True, truncation=True, return_tensors="pt")
    logits = {}
    with torch.no_grad():
        for form in ("parallel", "chunk", "recurrent"):
            model.set_attention_form(form)
            logits[form] = model(**batch).logits
    real = batch["attention_mask"].bool()
    print(f"\nthe three attention forms on {len(real)} padded held-out sentences "
          f"(chunk size {model.config.chunk_size}), max |logits - parallel logits| over real tokens:")
    for form in ("chunk", "recurrent"):
        print(f"  {form:9s} {(logits[form] - logits['parallel'])[real].abs().max().item():.2e}")


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo-mlm"))
    parser.add_argument("--variant", choices=("lit", "d", "s"), default="s")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per training block")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--vocab-size", type=int, default=4000, help="WordPiece vocabulary size")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inspect", action="store_true", help="only load and show what --output-dir holds")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "vocab_size", "hidden_size", "layers", "heads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.seq_len < 8:
        parser.error(f"--seq-len must be at least 8, got {args.seq_len}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.inspect:
        inspect_folder(args.output_dir, args.seed)
        return 0
    pretrain(args)
    print("\nreloading the folder in a fresh Python process ...", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, os.path.abspath(__file__), "--inspect", "--output-dir", str(args.output_dir), "--seed", str(args.seed)]
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
