"""Output discipline: decompose prints JSON only with --json; progress in a log is lines, not carriage returns;
--no-progress reaches transformers' bars."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

from mechdiff import progress
from mechdiff.cli import main


def test_decompose_prints_a_summary_and_json_only_when_asked():
    args = ["decompose", "--toy", "tms-5-2", "--steps", "30", "--no-progress"]
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "MMCS" in text.stdout and "alive" in text.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.stdout)
    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert json.loads(as_json.stdout)["name"] == "tms-5-2"


def test_a_bar_on_a_file_writes_whole_lines_every_few_seconds(monkeypatch):
    log = io.StringIO()  # not a terminal, like a CI log or `2> audit.log`
    monkeypatch.setattr(progress.sys, "stderr", log)
    with progress.progress_bar(200, "diff", unit="param") as bar:
        clock = [bar.start_t]
        bar._time = lambda: clock[0]  # tqdm's clock, stepped by hand: one second per update
        for _ in range(20):
            clock[0] += 1.0
            bar.update(10)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    # 20 s of work: the first line once the 1 s delay is over, then one per LOG_EVERY_S (6, 11, 16 s),
    # and the final count at close
    assert len(lines) == 5 and "10.0/200" in lines[0] and "60.0/200" in lines[1]
    assert all(line.startswith("diff:") for line in lines) and "200/200" in lines[-1]


def test_bars_write_lines_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    assert isinstance(progress.new_bar(total=3), progress.LineBar)


def test_no_progress_turns_transformers_bars_off_while_loading(monkeypatch, tmp_path):
    import transformers
    from transformers.utils import logging as hf_logging

    from mechdiff import models

    seen = []

    class Embedding:
        weight = type("W", (), {"shape": (10, 4)})()

    class Model:
        def get_input_embeddings(self):
            return Embedding()

        def to(self, device):
            return self

        def eval(self):
            return self

    def from_pretrained(*args, **kwargs):
        seen.append(hf_logging.is_progress_bar_enabled())
        return Model()

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(models, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(models, "check_tokenizer", lambda *args: None)
    monkeypatch.setattr(progress, "is_terminal", lambda stream: True)  # even on a terminal
    hf_logging.enable_progress_bar()
    models.load_causal_lm(tmp_path, progress=False)
    models.load_causal_lm(tmp_path, progress=True)
    assert seen == [False, True] and hf_logging.is_progress_bar_enabled()
