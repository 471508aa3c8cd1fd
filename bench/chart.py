"""Draws the bar chart of a `make bench` result: requests/s per row (median, with the
min-max spread of the rounds), each bar annotated with its ratio to jwt_authn and to the
wasm ceiling.

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


def main(source, target):
    with open(source, encoding="utf-8") as f:
        result = json.load(f)
    rows = result["rows"]
    machine = result["machine"]
    method = result["method"]

    labels = [row["label"] for row in rows]
    medians = [row["rps"]["median"] for row in rows]
    lower = [row["rps"]["median"] - row["rps"]["min"] for row in rows]
    upper = [row["rps"]["max"] - row["rps"]["median"] for row in rows]
    colors = [COLORS.get(row["filter"], "#607d8b") for row in rows]

    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 2.2))
    positions = list(range(len(rows)))[::-1]
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
    top = max(medians + [row["rps"]["max"] for row in rows]) if rows else 1
    ax.set_xlim(0, top * 1.45)
    for pos, row in zip(positions, rows):
        notes = []
        if row.get("ratio_rps_vs_jwt_authn") is not None and row["filter"] != "jwt_authn":
            notes.append(f'{row["ratio_rps_vs_jwt_authn"]:.2f}x jwt_authn')
        elif row["filter"] == "jwt_authn" and row.get("ratio_rps_vs_jwt_authn") is not None:
            notes.append(f'{row["ratio_rps_vs_jwt_authn"]:.2f}x jwt_authn ES256')
        same_alg = row.get("ratio_rps_vs_jwt_authn_same_alg")
        if row["filter"] == "tether" and row["algorithm"] != "ES256" and same_alg is not None:
            notes.append(f'{same_alg:.2f}x jwt_authn {row["algorithm"]}')
        if row.get("ratio_rps_vs_ceiling") is not None and row["filter"] != "ceiling":
            notes.append(f'{row["ratio_rps_vs_ceiling"]:.2f}x ceiling')
        notes.append(f'p99 {row["p99_ms"]:.1f} ms')
        if row.get("note"):
            notes.append("(no token cache in this build)")
        ax.text(
            row["rps"]["max"] + top * 0.01,
            pos,
            "   ".join(notes),
            va="center",
            fontsize=8,
        )
    ax.grid(axis="x", linestyle=":", alpha=0.6)
    ax.set_axisbelow(True)
    title = "Tether vs Envoy jwt_authn: one Envoy worker, mTLS, HTTP/1.1 keep-alive"
    subtitle = (
        f'{machine["envoy"]}, {machine["oha"]}, {method["concurrency"]} connections, '
        f'{method["rounds"]} round(s) x {method["seconds_per_measurement"]} s; '
        f'{machine["nproc"]} x {machine["cpu"]}, {machine["kernel"]}; {result["timestamp"]}'
    )
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    fig.text(
        0.01,
        0.005,
        "x jwt_authn: against jwt_authn ES256 in the same cache mode (with its cache for the "
        "rows without one); x ceiling: against the wasm ceiling. Reproduce: make bench",
        fontsize=7,
        color="#616161",
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(target, dpi=110)
    print(f"chart: {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
