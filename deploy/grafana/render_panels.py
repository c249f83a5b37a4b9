"""Renders the Grafana dashboard's panels as one SVG, from a real Prometheus:
every panel's queries, exactly as the dashboard has them (optionally with a
shorter rate window for a short run), through Prometheus's query_range API.
Grafana itself is not needed; what is drawn is what its panels would show.

    python3 deploy/grafana/render_panels.py --prometheus http://127.0.0.1:9090 \
        --start 1700000000 --end 1700000300 --rate-window 30s --out dashboard.svg

Standard library only.
"""

import argparse
import html
import json
import math
import re
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "sesame-dashboard.json"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
W, H, COLS = 430, 210, 3
PAD_L, PAD_R, PAD_T, PAD_B = 52, 10, 34, 40


def query_range(base, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def label_of(metric, legend):
    if legend:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend)
    keys = [k for k in sorted(metric) if k not in ("__name__", "job")]
    return ",".join(f"{k}={metric[k]}" for k in keys) or "value"


def nice_max(v):
    if v <= 0 or not math.isfinite(v):
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def fmt(v):
    if v >= 1000:
        return f"{v / 1000:g}k"
    if v >= 1 or v == 0:
        return f"{v:g}"
    return f"{v:.3g}"


def panel_svg(x0, y0, title, series, start, end):
    out = [f'<g transform="translate({x0},{y0})">',
           f'<rect width="{W - 8}" height="{H - 8}" fill="#fff" stroke="#ccc"/>',
           f'<text x="8" y="16" font-size="12" font-weight="bold">{html.escape(title[:64])}</text>']
    pw, ph = W - 8 - PAD_L - PAD_R, H - 8 - PAD_T - PAD_B
    values = [v for _, pts in series for _, v in pts if math.isfinite(v)]
    top = nice_max(max(values) if values else 0)
    for i in range(5):
        y = PAD_T + ph - ph * i / 4
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{fmt(top * i / 4)}</text>')
    span = max(end - start, 1)
    for i in range(5):
        x = PAD_L + pw * i / 4
        out.append(f'<text x="{x:.1f}" y="{PAD_T + ph + 12}" font-size="9" text-anchor="middle">{int(span * i / 4)} s</text>')
    if not series:
        out.append(f'<text x="{PAD_L + pw / 2}" y="{PAD_T + ph / 2}" font-size="11" text-anchor="middle" fill="#888">no data</text>')
    for n, (name, pts) in enumerate(series[:8]):
        color = COLORS[n % len(COLORS)]
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{PAD_L + pw * (t - start) / span:.1f},{PAD_T + ph - ph * min(v, top) / top:.1f}"
            for i, (t, v) in enumerate(p for p in pts if math.isfinite(p[1]))
        )
        if path:
            out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        lx, ly = PAD_L + (n % 2) * (pw / 2), PAD_T + ph + 24 + (n // 2) * 10
        if ly < H - 10:
            out.append(f'<rect x="{lx:.1f}" y="{ly - 7}" width="8" height="3" fill="{color}"/>')
            out.append(f'<text x="{lx + 11:.1f}" y="{ly - 3}" font-size="8">{html.escape(name[:34])}</text>')
    out.append("</g>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--step", default="2s")
    ap.add_argument("--rate-window", default="", help="replace every [5m] range with this (short runs)")
    ap.add_argument("--title", default="Sesame")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    rows = math.ceil(len(panels) / COLS)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * COLS}" height="{H * rows + 30}" font-family="sans-serif">',
             f'<rect width="100%" height="100%" fill="#f7f7f7"/>',
             f'<text x="8" y="20" font-size="14" font-weight="bold">{html.escape(args.title)}</text>']
    empty = []
    for i, p in enumerate(panels):
        series = []
        for t in p["targets"]:
            expr = t["expr"]
            if args.rate_window:
                expr = expr.replace("[5m]", f"[{args.rate_window}]")
            for r in query_range(args.prometheus, expr, args.start, args.end, args.step):
                pts = [(float(ts), float(v)) for ts, v in r["values"]]
                series.append((label_of(r["metric"], t.get("legendFormat", "")), pts))
        if not series:
            empty.append(p["title"])
        parts.append(panel_svg((i % COLS) * W + 4, (i // COLS) * H + 30, p["title"], series, args.start, args.end))
    parts.append("</svg>")
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}: {len(panels)} panels; without data: {empty or 'none'}")


if __name__ == "__main__":
    main()
