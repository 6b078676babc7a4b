"""The `lion-hf` command line: --version, help without a command, and one progress display during long steps."""

from __future__ import annotations

import pytest
from helpers import randomized, tiny_text_config
from transformers.utils import logging as transformers_logging

import lion_hf
from lion_hf import LionForMaskedLM
from lion_hf.cli import main as lion_hf_main

LIBRARY_BARS = ("Writing model shards", "Loading weights")


def test_version_and_help_without_a_command(capsys):
    with pytest.raises(SystemExit) as done:
        lion_hf_main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"lion-hf {lion_hf.__version__}\n"
    assert lion_hf_main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: lion-hf") and all(command in out for command in ("info", "convert", "export", "push"))


def test_export_and_convert_show_one_progress_bar_and_restore_the_libraries_bars(tmp_path, fixtures_dir, capsys):
    randomized(LionForMaskedLM(tiny_text_config())).save_pretrained(tmp_path / "src")
    capsys.readouterr()
    assert transformers_logging.is_progress_bar_enabled()
    assert lion_hf_main(["export", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "export out" in err and "writing the card" in err
    assert not [bar for bar in LIBRARY_BARS if bar in err], err
    assert transformers_logging.is_progress_bar_enabled()

    fixture = fixtures_dir / "vision_lion_d_raster"
    command = ["convert", "vision", f"{fixture}.pth", str(tmp_path / "converted"), "--original-config", f"{fixture}.json"]
    assert lion_hf_main([*command, "--verify", f"{fixture}.io.safetensors"]) == 0
    err = capsys.readouterr().err
    assert "convert vision" in err and "verifying" in err
    assert not [bar for bar in LIBRARY_BARS if bar in err], err
    assert transformers_logging.is_progress_bar_enabled()


def test_a_failing_step_erases_the_bar_so_the_error_starts_a_clean_line(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text('{"model_type": "lion", "architectures": ["LionForMaskedLM"]}')
    assert lion_hf_main(["export", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "export out" in err  # the bar was drawn ...
    assert err.splitlines()[-1].startswith("error: ") and "has a LION config.json but no weights" in err
    assert err.splitlines()[-2].strip() == "", "... and erased before the message"
    assert transformers_logging.is_progress_bar_enabled()
