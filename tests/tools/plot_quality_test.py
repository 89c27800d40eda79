"""scripts/plot_quality.py on the committed results (bench/quality) and on a small synthetic
set: linear perplexity axes with random off the scale (named in the legend), a gap axis that
shows negative gaps, case counts on the retrieval heatmaps (run by pytest_plot_quality.sh)."""
import csv
import os
import shutil
import sys
import tempfile

src = os.environ.get("KVS_SOURCE_DIR", ".")
sys.path.insert(0, os.path.join(src, "scripts"))
import plot_quality as pq  # noqa: E402

out = tempfile.mkdtemp(prefix="kvs_plot_")
try:
    rows = pq.read(os.path.join(src, "bench/quality/ppl.csv"))
    ppl_axes, gap_axes = pq.plot_ppl(rows, out)
    rnd = [float(r["ppl"]) for r in rows if r["policy"] == "random"]
    for ax in ppl_axes:
        assert ax.get_yscale() == "linear", ax.get_yscale()
        assert ax.get_ylim()[1] < min(rnd), (ax.get_ylim(), min(rnd))  # random off the scale
        labels = ax.get_legend_handles_labels()[1]
        assert any(l.startswith("random:") and "off the scale" in l for l in labels), labels
    gaps = [float(r["gap_second_half"]) for r in rows if r["policy"] not in ("full", "random")]
    for ax in gap_axes:
        assert ax.get_yscale() == "linear", ax.get_yscale()
        assert ax.get_ylim()[0] <= min(min(gaps), 0), (ax.get_ylim(), min(gaps))
    # retrieval: equal counts in the titles, unequal ones in the cells
    nrows = pq.read(os.path.join(src, "bench/quality/needle.csv"))
    axes = pq.plot_retrieval(nrows, "needle", out)
    titles = [a.get_title() for row in axes for a in row if a.get_title()]
    assert titles and all("cases per cell" in t for t in titles), titles
    extra = [dict(r) for r in nrows if r["policy"] == "knorm"][:3]
    axes = pq.plot_retrieval(nrows + extra, "needle", out)
    knorm = [a for row in axes for a in row if a.get_title().startswith("knorm")][0]
    texts = [t.get_text() for t in knorm.texts]
    assert any("n=6" in t for t in texts) and any("n=5" in t for t in texts), texts
    assert os.path.exists(os.path.join(out, "ppl.png")) and os.path.exists(
        os.path.join(out, "needle.png"))
    print("plot_quality: OK")
finally:
    shutil.rmtree(out)
