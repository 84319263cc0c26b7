import base64
import json
from html.parser import HTMLParser

import pytest
from cli_helpers import TINY

from distsgd.cli import main
from distsgd.plots import comparison_figure, read_run, unique_labels
from distsgd.sweep import run_sweep


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self.cells, self.links = [], [], [], []
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("img", "meta", "br"):
            self._open.append(tag)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def handle_data(self, data):
        if "h2" in self._open:
            self.headings.append(data.strip())
        if {"td", "th"} & set(self._open) and data.strip():
            self.cells.append(data.strip())

    def handle_endtag(self, tag):
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag):]


def _png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    return data


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = tmp / "tiny.toml"
    cfg.write_text(TINY)
    res = run_sweep(cfg, {"algorithm.lr": [0.05, 0.2]}, seeds=2, out=tmp / "runs", jobs=1, say=lambda _: None)
    return res.root


def test_the_report_is_one_page_with_every_image_embedded(sweep_root, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(sweep_root), "-o", str(out), "--target", "0.8"]) == 0
    page = Page()
    page.feed(out.read_text())
    assert page.images and all(_png(src) for src in page.images)
    assert not page.links  # nothing to fetch: one self-contained file
    assert page.headings == ["Summary", "Comparison", "Configs", "Environment"]
    assert "algorithm.lr" in page.cells and "0.05" in page.cells and "0.2" in page.cells
    assert any("±" in c for c in page.cells)  # the spread over the two seeds
    assert "2 (0, 1)" in page.cells and "steps to 0.8" in page.cells
    assert "torch" in page.cells and "cores" in page.cells
    sweep = json.loads((sweep_root / "sweep.json").read_text())
    acc = next(g for g in sweep["groups"] if dict(g["values"])["algorithm.lr"] == 0.2)["metrics"]["test_acc"]
    assert f"{acc['mean']:.4g} ± {acc['std']:.2g}" in page.cells  # the same numbers as the sweep's table


def test_runs_without_recorded_config_or_environment(sweep_root, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(sweep_root / "lr0.05-seed0", run)
    (run / "config.toml").unlink()
    (run / "environment.json").unlink()
    out = tmp_path / "r.html"
    assert main(["report", str(run), str(sweep_root / "lr0.2-seed1"), "-o", str(out)]) == 0
    text = out.read_text()
    assert "1 of 2 runs recorded no environment.json" in text and "algorithm.lr" in text  # from summary.json


def test_report_opens_in_headless_chromium(sweep_root, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "report.html"
    assert main(["report", str(sweep_root), "-o", str(out)]) == 0
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch()
        except Exception as e:  # playwright without its browser
            pytest.skip(f"no headless chromium: {e}")
        page = browser.new_page()
        page.goto(out.as_uri())
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        browser.close()
    assert sizes and all(done and width > 0 for done, width in sizes)


def test_report_of_a_directory_without_runs(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"distsgd: error: {tmp_path / 'empty'}: no runs in it (no metrics.jsonl here or in its folders)"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_plot_legend_has_each_label_once(sweep_root, tmp_path):
    runs = [read_run(d) for d in sorted(sweep_root.glob("lr0.05-seed*"))]
    fig = comparison_figure([("lr 0.05", rows) for _, rows in runs], title="t")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["lr 0.05"]
    axes = fig.axes
    assert axes[0].get_xlabel() == "steps" and "wall-clock time (s)" in [a.get_xlabel() for a in axes]
    assert all(a.get_title() for a in axes)
    assert unique_labels(["a", "a", "b"], ["x/r1", "x/r2", "x/b"]) == ["a (r1)", "a (r2)", "b"]
    assert unique_labels(["a", "a"]) == ["a #1", "a #2"]
    out = tmp_path / "p.png"
    assert main(["plot", *map(str, sorted(sweep_root.glob("lr*"))), "-o", str(out), "--title", "T"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
