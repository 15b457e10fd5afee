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


def test_titles_do_not_repeat_the_kind():
    assert plot._title("decode", "decode (h32-8, d128, bfloat16)") == "decode (h32-8, d128, bfloat16)"
    assert plot._title("kv-write", "kv_write (prompt)") == "kv-write suite: kv_write (prompt)"
    assert plot._title("smoke", "prefill (h4-2)") == "smoke suite: prefill (h4-2)"


def test_one_panel_leaves_room_for_title_and_legend(tmp_path, synthetic):
    import matplotlib.image

    providers = ("ours-paged", "vllm-fa3", "vllm-triton", "torch-sdpa", "flash-attn", "flashinfer")
    rows = [synthetic(p, 10.0 + i, context=ctx) for i, p in enumerate(providers) for ctx in (1024, 4096)]
    write_csv(rows, tmp_path / "results.csv")
    plot.plot_csv(tmp_path / "results.csv")
    png = next((tmp_path / "plots").glob("decode-decode-*.png"))
    height, width = matplotlib.image.imread(png).shape[:2]
    # 6.4 inches at 110 dpi at least (4.2 inches cut the legend's ends), and taller than the
    # 3.4-inch panel: the two title lines and the legend rows sit outside it.
    assert width >= 6.4 * 110 * 0.95 and height >= 4.4 * 110 * 0.95
