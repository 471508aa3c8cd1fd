"""Draws the bar chart of a `make bench` result: requests/s per row (median, with the
min-max spread of the rounds), each bar annotated with its ratio to jwt_authn and to the
wasm ceiling; the DPoP rows (a fresh proof on every request, sent by bench/signload) with the
front Envoy's CPU time per request beyond the cached mtls row's (the DPoP breakdown stages,
if any, are not drawn); below it, a second panel for the signed-request rows (a 1 KiB POST
unsigned, and signed with ES256, EdDSA and HS256), each annotated with its ratio to the
unsigned POST and the front Envoy's extra CPU time per request. Either panel may be absent
(BENCH_ONLY).

Usage: chart.py RESULT.json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "none": "#9e9e9e",
    "ceiling": "#b39ddb",
    "jwt_authn": "#64b5f6",
    "tether": "#ef6c00",
}
UNSIGNED_COLOR = "#ffb74d"
DPOP_COLOR = "#8e24aa"
SIGNLOAD_BASELINE_COLOR = "#ffcc80"
SIGNED_COLOR = "#e65100"


def main(source, target):
    with open(source, encoding="utf-8") as f:
        result = json.load(f)
    # The DPoP breakdown stages are refusals, measured to split a DPoP request's cost: they are
    # in the table and the JSON, not in the chart.
    rows = [r for r in result.get("rows") or [] if r.get("request") != "dpop_breakdown_stage"]
    signed = (result.get("signed_requests") or {}).get("rows") or []
    dpop = {c["dpop_row"]: c for c in (result.get("dpop") or {}).get("comparisons") or []}
    machine = result["machine"]
    method = result["method"]

    panels = [len(rows) + 1.5] if rows else []
    if signed:
        panels.append(len(signed) + 1.5)
    if not panels:
        sys.exit("chart.py: no rows to draw")
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(11, 0.55 * sum(panels) + 1.4),
        gridspec_kw={"height_ratios": panels},
        squeeze=False,
    )
    axes = [a[0] for a in axes]
    subtitle = (
        f'{machine["envoy"]}, {machine["oha"]}, {method["concurrency"]} connections, '
        f'{method["rounds"]} round(s) x {method["seconds_per_measurement"]} s; '
        f'{machine["nproc"]} x {machine["cpu"]}, {machine["kernel"]}; {result["timestamp"]}'
    )
    workers = method.get("front_envoy_workers", 1)
    envoy = "one Envoy worker" if workers == 1 else f"one Envoy, {workers} workers"
    if method.get("upstream", "").startswith("direct"):
        envoy += ", routes answered in the front Envoy (direct_response)"
    footnotes = []
    if rows:
        token_panel(axes[0], rows, dpop)
        axes[0].set_title(
            f"Tether vs Envoy jwt_authn: {envoy}, mTLS, HTTP/1.1 keep-alive\n" + subtitle,
            fontsize=10,
        )
        footnotes.append(
            "x jwt_authn: against jwt_authn ES256 in the same cache mode (with its cache for the "
            "rows without one); x ceiling: against the wasm ceiling."
        )
        if dpop:
            footnotes.append(
                "dpop rows (bench/signload, a fresh DPoP proof on every request): +us/req CPU "
                "beyond the cached mtls row of the same token algorithm (oha); the rows marked "
                "signload send that mtls request through signload."
            )
    if signed:
        section = result["signed_requests"]["method"]
        ax = axes[-1]
        signed_panel(ax, signed)
        title = (
            "Signed requests: POST 1 KiB, a fresh detached JWS (x-jws-signature) on every "
            f"request; {envoy.split(',')[0]}, mTLS"
        )
        detail = (
            f'{section["load_generator"]}, {section["concurrency"]} connections, '
            f'{section["rounds"]} round(s) x {section["seconds_per_measurement"]} s'
        )
        if not rows:
            detail += (
                f'; {machine["envoy"]}\n{machine["nproc"]} x {machine["cpu"]}, '
                f'{machine["kernel"]}; {result["timestamp"]}'
            )
        ax.set_title(f"{title}\n{detail}", fontsize=10)
        footnotes.append(
            "Signed rows: x unsigned: req/s against the unsigned POST; +us/req: the front Envoy's "
            "CPU time per request beyond the unsigned POST's (the cost of the signature)."
        )
    fig.text(
        0.01,
        0.005,
        " ".join(footnotes) + " Reproduce: make bench",
        fontsize=7,
        color="#616161",
        wrap=True,
    )
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    fig.savefig(target, dpi=110)
    print(f"chart: {target}")


def bars(ax, labels, rps, colors):
    """Horizontal bars, top to bottom, with the min-max whiskers; returns their positions."""
    medians = [r["median"] for r in rps]
    lower = [r["median"] - r["min"] for r in rps]
    upper = [r["max"] - r["median"] for r in rps]
    positions = list(range(len(labels)))[::-1]
    ax.barh(
        positions,
        medians,
        xerr=[lower, upper],
        color=colors,
        error_kw={"ecolor": "#424242", "capsize": 3, "linewidth": 1},
    )
    ax.set_yticks(positions)
    ax.set_yticklabels(labels)
    ax.set_xlabel("requests/s (median of rounds; whiskers: min-max)")
    top = max(medians + [r["max"] for r in rps]) if rps else 1
    ax.set_xlim(0, top * 1.45)
    ax.grid(axis="x", linestyle=":", alpha=0.6)
    ax.set_axisbelow(True)
    return positions, top


def row_color(row):
    if row.get("request") == "dpop":
        return DPOP_COLOR
    if row.get("load_generator") == "signload":
        return SIGNLOAD_BASELINE_COLOR
    return COLORS.get(row["filter"], "#607d8b")


def token_panel(ax, rows, dpop):
    colors = [row_color(row) for row in rows]
    positions, top = bars(ax, [row["label"] for row in rows], [row["rps"] for row in rows], colors)
    for pos, row in zip(positions, rows):
        notes = []
        comparison = dpop.get(row["id"])
        if comparison is not None:
            notes.append(
                f'{comparison["extra_envoy_cpu_us_per_request"]:+.0f} us/req CPU vs '
                f'{comparison["mtls_label"]}'
            )
            if comparison.get("target_us") is not None:
                verdict = "met" if comparison.get("met") else "MISSED"
                notes.append(f'target +{comparison["target_us"]:.0f}: {verdict}')
        if row.get("ratio_rps_vs_jwt_authn") is not None and row["filter"] != "jwt_authn":
            notes.append(f'{row["ratio_rps_vs_jwt_authn"]:.2f}x jwt_authn')
        elif row["filter"] == "jwt_authn" and row.get("ratio_rps_vs_jwt_authn") is not None:
            notes.append(f'{row["ratio_rps_vs_jwt_authn"]:.2f}x jwt_authn ES256')
        same_alg = row.get("ratio_rps_vs_jwt_authn_same_alg")
        if row["filter"] == "tether" and row["algorithm"] != "ES256" and same_alg is not None:
            notes.append(f'{same_alg:.2f}x jwt_authn {row["algorithm"]}')
        if row.get("ratio_rps_vs_ceiling") is not None and row["filter"] != "ceiling":
            notes.append(f'{row["ratio_rps_vs_ceiling"]:.2f}x ceiling')
        if row.get("load_generator") == "signload" and comparison is None:
            notes.append(f'{row["envoy_cpu_us_per_request"]:.0f} us/req CPU')
        notes.append(f'p99 {row["p99_ms"]:.1f} ms')
        if row.get("note"):
            notes.append("(no token cache in this build)")
        color = "black"
        if row.get("unexpected"):
            notes.append(f'FAILED: {row["unexpected"]} unexpected')
            color = "#c62828"
        ax.text(
            row["rps"]["max"] + top * 0.01,
            pos,
            "   ".join(notes),
            va="center",
            fontsize=8,
            color=color,
        )


def signed_panel(ax, rows):
    colors = [SIGNED_COLOR if row.get("algorithm") else UNSIGNED_COLOR for row in rows]
    positions, top = bars(ax, [row["label"] for row in rows], [row["rps"] for row in rows], colors)
    for pos, row in zip(positions, rows):
        notes = []
        if row.get("ratio_rps_vs_unsigned") is not None:
            notes.append(f'{row["ratio_rps_vs_unsigned"]:.2f}x unsigned')
        cost = row.get("signing_cost_envoy_cpu_us_per_request")
        if cost is not None:
            notes.append(f"{cost:+.0f} us/req CPU")
        else:
            notes.append(f'{row["envoy_cpu_us_per_request"]:.0f} us/req CPU')
        notes.append(f'p99 {row["p99_ms"]:.1f} ms')
        color = "black"
        if row.get("non_200"):
            notes.append(f'FAILED: {row["non_200"]} non-200 {row.get("statuses")}')
            color = "#c62828"
        ax.text(
            row["rps"]["max"] + top * 0.01,
            pos,
            "   ".join(notes),
            va="center",
            fontsize=8,
            color=color,
        )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
