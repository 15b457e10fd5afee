import builtins

from attn_bench import plot
from attn_bench.results import write_csv


def test_plots_from_synthetic_csv(tmp_path, synthetic):
    rows = []
    for prov, speed in (("ours-paged", 1.0), ("vllm-fa3", 1.3)):
        for b in (1, 16):
            for ctx in (1024, 4096, 16384):
                rows.append(synthetic(prov, ctx * b / 1000 / speed, batch=b, context=ctx))
        rows.append(synthetic(prov, 500 / speed, context=4096, op="prefill"))
    write_csv(rows, tmp_path / "results.csv")
    made = plot.plot_csv(tmp_path / "results.csv")
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "decode-roofline.png" in pngs
    assert any(n.startswith("decode-decode-") for n in pngs)
    assert any(n.startswith("prefill-prefill-") for n in pngs)
    assert len(made) == len(pngs)
    for p in (tmp_path / "plots").glob("*.png"):
        assert p.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_degrades(tmp_path, monkeypatch, synthetic):
    write_csv([synthetic("a", 1.0)], tmp_path / "results.csv")
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    msgs = plot.plot_csv(tmp_path / "results.csv")
    assert "matplotlib is not installed" in msgs[0]
    assert not (tmp_path / "plots").exists()
