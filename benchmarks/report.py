"""Targets of issues 4 and 12 and the Markdown of a benchmarks.run result."""

from __future__ import annotations

from typing import Any

from benchmarks.cache_vs_full import rates_line
from benchmarks.common import load_text


def _best(sweep: dict[str, Any]) -> dict[str, Any]:
    return max(sweep["rows"], key=lambda r: r["gflops"])


def _row(sweep: dict[str, Any], batch: int) -> dict[str, Any] | None:
    return next((r for r in sweep["rows"] if r["batch_size"] == batch), None)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    lim = res["limit"]["matmul_gflops"]
    out = []
    c = res["cache_vs_full"]
    scale = "" if c["tracing_ok"] else f"; NOT at scale: tracing {c['max_tracing_fraction']:.0%} of the timed part"
    out.append({"target": "cached head >= 10x faster per row than backbone in the loop (steady epochs, batch 32)",
                "value": f"{c['ratio']:.1f}x ({c['cached']['rows_per_s']:,.0f} vs {c['loop']['rows_per_s']:,.0f} "
                         f"rows/s){scale}",
                # A ratio measured where tracing weighs is not the figure the target is about: no verdict.
                "met": (c["ratio"] >= 10) if c["tracing_ok"] else None})
    for s in res["head_sweeps"]:
        b, b32 = _best(s), _row(s, 32)
        out.append({"target": f"head training >= 50% of numpy matmul at best batch ({s['name']})",
                    "value": f"{b['gflops'] / lim:.0%} at batch {b['batch_size']} "
                             f"({b32['gflops'] / lim:.0%} at batch 32); limit {lim:.0f} GFLOP/s",
                    "met": b["gflops"] / lim >= 0.5})
    out.append({"target": "30-trial fmnist_reg study < 45 min on 2 idle cores, batch 32; trial peak memory < 2 GB",
                "value": "measured end to end by `python -m benchmarks.study`, not by this run", "met": None})
    return out


def _met(m: bool | None) -> str:
    return "n/a" if m is None else ("met" if m else "NOT met")


def markdown(res: dict[str, Any]) -> str:
    m, lim = res["machine"], res["limit"]["matmul_gflops"]
    L: list[str] = []
    L += [f"### Benchmarks ({res['plan']}): `{res.get('command', '')}`", "",
          f"{m['cpu']}, {m['cores']} cores, {m['date']}; load average {m['load_avg_at_start'][0]:.2f} at start, "
          f"{m.get('load_avg_at_end', [float('nan')])[0]:.2f} at end; weights: {res['weights']}; "
          f"total {res['wall_s']:.0f} s.", ""]
    L += ["| target | measured | |", "|---|---|---|"]
    L += [f"| {t['target']} | {t['value']} | {_met(t['met'])} |" for t in res["targets"]]

    lm = res["limit"]
    L += ["", "**Machine limit** (numpy float32):", "",
          f"4096^3 matmul {lm['matmul_4096_gflops_start']:.0f} GFLOP/s at start, "
          f"{lm.get('matmul_4096_gflops_before_sweeps', float('nan')):.0f} before the head sweeps, "
          f"{lm['matmul_4096_gflops_end']:.0f} at end (limit used: the highest, {lim:.0f}; the spread is the other "
          f"engineers' load); head-shaped GEMM (b x 2048) @ (2048 x 1024): "
          + ", ".join(f"b={b}: {g:.0f}" for b, g in lm["gemm_head_shape_gflops"].items()) + " GFLOP/s.", ""]

    c = res["cache_vs_full"]
    L += ["**Cache vs backbone in the loop, at scale** (per-row rate over steady epochs, i.e. all but the first; "
          "same head, batch 32; each side in its own child on its default backend):", "",
          "| side | backend | rows | epochs s | steady epoch s | rows/s | first-epoch overhead (share of timed part) "
          "| load before / after |", "|---|---|---|---|---|---|---|---|"]
    for name, x in (("cached features", c["cached"]), ("frozen ResNet50 in the loop", c["loop"])):
        L.append(f"| {name} | {x['backend']} | {x['rows']:,} | {', '.join(f'{v:.2f}' for v in x['epoch_s'])} | "
                 f"{x['steady_epoch_s']:.2f} | {x['rows_per_s']:,.0f} | {x['tracing_s']:.1f} s "
                 f"({x['tracing_fraction']:.1%}) | {load_text(x['load_avg_before'])} / "
                 f"{load_text(x['load_avg_after'])} |")
    L += ["", rates_line(c) + ".", ""]
    e = res["extraction"]
    L += [f"**Feature extraction** (one-time, `search.features.feature_cache.extract_job` in a child): {e['n_images']} images in "
          f"{e['wall_s']:.1f} s wall (process start and model build included), "
          f"{'steady' if e['steady'] else 'wall-inclusive (one chunk)'} {e['images_per_s']:.0f} images/s "
          f"= {e['gflops']:.1f} GFLOP/s ({e['share_of_matmul']:.0%} of matmul; ResNet50 at 32x32 = "
          f"{e['flops_per_image'] / 1e9:.3f} GFLOP/image); peak memory {e['peak_memory_mb']:.0f} MB. "
          f"Backbone forward alone (warm, batch 256, in the comparison child): {e['forward_images_per_s']:.0f} images/s "
          f"= {e['forward_gflops']:.1f} GFLOP/s ({e['forward_gflops'] / lim:.0%} of matmul).", ""]

    L += ["**Head training** (2048 -> 1024 -> 10, Adam; steady epoch = faster of 2; FLOPs = 2 x (2 x 2048 x 1024 "
          "+ 3 x 1024 x 10) x rows: no input gradient for the first layer):", "",
          "| backend | rows | batch | epoch s | GFLOP/s | % of matmul |", "|---|---|---|---|---|---|"]
    for s in res["head_sweeps"]:
        L += [f"| {s['name']} | {s['n_rows']} | {r['batch_size']} | {r['steady_epoch_s']:.2f} | {r['gflops']:.1f} | "
              f"{r['gflops'] / lim:.0%} |" for r in s["rows"]]
    return "\n".join(L) + "\n"
