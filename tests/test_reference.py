"""The configuration reference: `distsgd algorithms` and the README block, from the registries."""

from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from distsgd.algorithms import ALGORITHMS, options
from distsgd.cli import main
from distsgd.compress import COMPRESSORS
from distsgd.reference import END, START, fmt_value, readme_block, render_markdown, render_text, splice
from distsgd.reference import main as reference_main
from distsgd.robust import AGGREGATORS, ATTACK_REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"


def _lines(text):
    return [line.strip() for line in text.splitlines()]


def test_readme_block_is_the_generated_reference():
    """Regenerate with `python -m distsgd.reference --write README.md`."""
    assert readme_block(README.read_text()) == render_markdown()


def test_reference_check_and_write(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\nbefore\n\n{START}\nold\n{END}\n\nafter\n")
    assert reference_main(["--check", str(stale)]) == 1
    assert reference_main(["--write", str(stale)]) == 0
    text = stale.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert readme_block(text) == render_markdown()
    assert reference_main(["--check", str(stale)]) == 0
    assert splice(text, render_markdown()) == text  # idempotent


def test_markdown_has_every_entry_option_and_default():
    md = render_markdown()
    for reg in (ALGORITHMS, COMPRESSORS, AGGREGATORS, ATTACK_REGISTRY):
        for e in reg.entries():
            assert f"`{e.name}`" in md, e.name
            for o in e.options():
                default = "required" if o.required else f"`{fmt_value(o.default)}`"
                assert f"| `{o.name}` |" in md and default in md, (e.name, o.name)
    for key in ("`[task]`", "`[network]`", "`[lr_schedule]`", "`n_workers`", "`straggler_prob`", "`warmup`"):
        assert key in md


def test_listing_shows_every_algorithm(capsys):
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    heads = {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")}
    for name in ALGORITHMS.names():
        assert name in heads, name
    for word in ("COMPRESSORS", "AGGREGATORS", "ATTACKS", "TOPOLOGIES", "scaled_sign", "geomed", "alie"):
        assert word in out
    assert max(len(line) for line in render_text(width=100).splitlines()) <= 100


def test_one_algorithm_shows_its_options_and_defaults(capsys):
    assert main(["algorithms", "choco_sgd"]) == 0
    out = capsys.readouterr().out
    lines = _lines(out)
    gamma = next(line for line in lines if line.startswith("gamma "))
    compressor = next(line for line in lines if line.startswith("compressor "))
    lr = next(line for line in lines if line.startswith("lr "))
    assert "0.05" in gamma.split() and '"topk:0.01"' in compressor.split() and "required" in lr.split()
    assert "Koloskova" in out and "dpsgd" not in out


def test_other_kinds_by_name(capsys):
    assert main(["algorithms", "topk"]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and '"topk:value" sets ratio' in out
    assert main(["algorithms", "robust_sgd"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("aggregator ") and '"geomed"' in line for line in _lines(out))
    assert any(line.startswith("worker_momentum ") and "0.9" in line.split() for line in _lines(out))


def test_unknown_name_is_one_line_and_exit_2(capsys):
    assert main(["algorithms", "adamw_sgd"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert "unknown name 'adamw_sgd'" in lines[0] and "choco_sgd" in lines[0] and "topk" in lines[0]
    assert captured.out == ""


def test_a_registered_algorithm_appears_without_restating_it(capsys):
    @options
    class Toy:
        """Toy SGD: one line of summary."""

        lr: Annotated[float, Field(gt=0, description="step size")]
        rounds: Annotated[int, Field(ge=1, description="rounds between averagings")] = 3
        name: str = "toy_sgd"

    ALGORITHMS.register(factory=Toy, paper="Nobody, 2024")
    try:
        text = render_text("toy_sgd", width=100)
        assert "Toy SGD: one line of summary." in text and "Nobody, 2024" in text
        rounds = next(line for line in _lines(text) if line.startswith("rounds "))
        assert rounds.split()[1:5] == ["int", "≥", "1", "3"]
        assert "#### `toy_sgd`" in render_markdown()
    finally:
        ALGORITHMS.unregister("toy_sgd")
    with pytest.raises(Exception, match="unknown name"):
        render_text("toy_sgd")
