"""What the command-line tests share: a tiny config, writing it, and reading one error line."""

TINY = """
name = "tiny"
n_workers = 4
steps = 20
eval_every = 5
[task]
dataset = "logistic"
model = "linear"
samples_per_worker = 50
dim = 5
batch_size = 8
[algorithm]
name = "dpsgd"
lr = 0.1
topology = "ring"
"""


def write_config(tmp_path, text=TINY, name="tiny.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def one_error_line(capsys) -> str:
    """stderr holds exactly one line and no traceback: that line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
