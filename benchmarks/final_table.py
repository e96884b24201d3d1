"""README's one table: every compared model on STS-B test, SciFact, Banking77 and the generation check.

Reads the result files the other benchmark scripts wrote (nothing is re-measured here) and writes
``benchmarks/results/final_table.md`` and ``final_table.png`` (embedding gain against generation kept).
A cell whose result file is missing says "not measured". Each row names the files it was built from.

    python benchmarks/final_table.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name, recipe, training, STS-B file (+ which of its models), transfer file (+ model), generation check (file, key),
# or a search row (csv, name) for dev-only figures; label: where the plot writes the row's name (default right)
ROWS = [
    {"name": "base", "recipe": "–", "training": "–",
     "sts": ("sts_test.json", "base"), "transfer": ("transfer_hybrid.json", "base"),
     "gen": ("generation_check.json", "base"), "dev": ("recipe_search.csv", "base (untrained)")},
    {"name": "**pure GRACE, LoRA, lr 2e-4, 16 updates of 32 (default)**", "label": "left",
     "plot_name": "LoRA 2e-4 (default)",
     "recipe": "`sup_cpu.yaml`",
     "training": "16 updates × 32 rollouts (512 generated), sampled through the merged adapter; 33 min wall on the "
                 "idle machine (step-0 evaluation cached)",
     "sts": ("sts_test_lora_r16_2e4.json", "grace"), "transfer": ("transfer_lora_r16_2e4.json", "grace"),
     "gen": ("run_pure_lora_r16_2e4/generation_check.json", None)},
    {"name": "pure GRACE, LoRA, lr 1e-4, 16 updates of 32 (previous default)", "label": "right",
     "recipe": "`sup_cpu.yaml` + `learning_rate=1e-4 merge_lora_for_generation=false eval_steps=16`",
     "training": "16 updates × 32 rollouts (512 generated), sampled through the unmerged adapter; 45-min cap on the "
                 "idle machine (measured run: an extra dev evaluation at update 10 and an uncached one at 0, so the "
                 "cap stopped it at 16 of 17)",
     "sts": ("sts_test_lora_r16.json", "grace"), "transfer": ("transfer_lora_r16.json", "grace"),
     "gen": ("run_pure_lora_r16/generation_check.json", None)},
    {"name": "pure GRACE, full fine-tuning, 17 updates of 32", "label": "above", "recipe": "`sup_full_cpu.yaml`",
     "training": "17 updates × 32 rollouts (576 generated); 35 min wall on the idle machine",
     "sts": ("sts_test_pure_b32.json", "grace"), "transfer": None,
     "gen": ("run_pure_17updates_b32/generation_check.json", None)},
    {"name": "pure GRACE, 33 updates of 16", "label": "left",
     "recipe": "`sup_full_cpu.yaml` + `gradient_accumulation_steps=2 max_steps=33`",
     "training": "33 updates × 16 rollouts (576 generated); 40 min budget, 49 min wall",
     "sts": ("sts_test.json", "grace"), "transfer": None, "gen": ("generation_check.json", "step33")},
    {"name": "pure GRACE, 33 updates of 16, cosine lr", "label": "right",
     "recipe": "`sup_full_cpu.yaml` + `gradient_accumulation_steps=2 max_steps=33 lr_scheduler_type=cosine`",
     "training": "33 updates × 16 rollouts (576 generated); 39 min wall on the idle machine",
     "sts": ("sts_test_pure_cosine.json", "grace"), "transfer": None,
     "gen": ("run_pure_33updates_cosine/generation_check.json", None)},
    {"name": "pure GRACE, 6 updates", "label": "left",
     "recipe": "`sup_full_cpu.yaml` + `gradient_accumulation_steps=2 max_steps=6`",
     "training": "6 updates × 16 (128 generated); 13 min (search row `pure_b16`)",
     "sts": ("sts_test_pure_b16.json", "grace"), "transfer": None, "gen": ("recipe_search.csv", "pure_b16"),
     "dev": ("recipe_search.csv", "pure_b16")},
    {"name": "pure GRACE, 6 updates (re-run)",
     "recipe": "`sup_full_cpu.yaml` + `gradient_accumulation_steps=2 max_steps=6`",
     "training": "6 updates × 16 (128 generated); 31 min wall under load",
     "sts": None, "transfer": None, "gen": ("run_pure_6updates/generation_check.json", None)},
    {"name": "pure GRACE + KL, 33 updates of 16",
     "recipe": "`sup_full_cpu.yaml` + `gradient_accumulation_steps=2 max_steps=33 beta=0.04`",
     "training": "33 updates × 16 (576 generated); 71 min wall under load",
     "sts": None, "transfer": None, "gen": ("run_pure_33updates_kl/generation_check.json", None)},
    {"name": "GRACE + InfoNCE (hybrid)", "label": "above", "recipe": "`hybrid_cpu.yaml`",
     "training": "16 updates × 8 rollouts",
     "sts": ("sts_test_hybrid.json", "grace"), "transfer": ("transfer_hybrid.json", "grace"),
     "gen": ("recipe_search.csv", "hybrid_16"), "dev": ("recipe_search.csv", "hybrid_16")},
    {"name": "InfoNCE only (no policy gradient)", "recipe": "`hybrid_cpu.yaml` + `tau=1e6 truncation_penalty=0`",
     "training": "dev: 25 updates × 8 (8-min search row); STS-B and generation check: a 16-update re-run",
     "sts": ("sts_test_infonce_only.json", "grace"), "transfer": ("transfer_infonce_only.json", "grace"),
     "gen": ("recipe_search.csv", "infonce_only_16"), "dev": ("recipe_search.csv", "spg4_lr2e5_cl1_noRL")},
    {"name": "CL baseline, tuned on dev (1,000 triples, lr 1e-4)",
     "recipe": "`cl_cpu.yaml` + `dataset_name=snli-triples max_samples=1000 learning_rate=1e-4`",
     "training": "", "sts": ("sts_test_cl_tuned_1000.json", "grace"),
     "transfer": ("transfer_cl_tuned_1000.json", "grace"), "gen": ("cl_search.csv", None),
     "dev": ("cl_search.csv", None)},
]


def _load(name: str):
    path = RESULTS / name
    if not path.exists():
        return None
    if name.endswith(".csv"):
        with path.open() as f:
            return list(csv.DictReader(f))
    return json.loads(path.read_text())


def _sts_cells(spec) -> list[str]:
    data = _load(spec[0]) if spec else None
    if data is None:
        return ["not measured"] * 3
    label = spec[1]
    rows = data["rows"]
    r, n = rows.get(f"{label}, rationale"), rows.get(f"{label}, no rationale")
    with_r = "not measured"
    if r is not None:
        with_r = f"{r['spearman']:.2f}"
        if label != "base":
            c = next((c for c in data["paired_bootstrap"]
                      if c["a"] == f"{label}, rationale" and c["b"] == "base, rationale"), None)
            if c:
                with_r += f" ({c['difference']:+.2f}, {c['ci95'][0]:+.2f} … {c['ci95'][1]:+.2f})"
    none = f"{n['spearman']:.2f}" if n else "not measured"
    length = f"{r['rationale_length']:.1f}, {100 * r['truncation_rate']:.1f}%" if r else "–"
    return [with_r, none, length]


def _transfer_cells(spec) -> list[str]:
    data = _load(spec[0]) if spec else None
    if data is None:
        return ["not measured"] * 2
    rows = data["rows"]
    r, n = rows.get(f"{spec[1]}, rationale", {}), rows.get(f"{spec[1]}, no rationale", {})

    def pair(key):
        a = f"{r[key]:.2f}" if key in r else "–"
        b = f"{n[key]:.2f}" if key in n else "–"
        return f"{a} / {b}"

    return [pair("scifact_ndcg@10"), pair("banking77_accuracy")]


def _search_row(spec) -> dict | None:
    data = _load(spec[0]) if spec else None
    if not data:
        return None
    if spec[1] is None:  # the CL search: its best dev row
        return max(data, key=lambda r: float(r["dev_spearman_no_rationale"]))
    return next((r for r in reversed(data) if r["name"] == spec[1]), None)


def _dev_cell(spec) -> str:
    row = _search_row(spec)
    if row is None:
        return "–"
    return f"{row.get('dev_spearman_rationale') or '–'} / {row['dev_spearman_no_rationale']}"


def _gen_cells(spec) -> tuple[list[str], dict | None]:
    data = _load(spec[0]) if spec else None
    if data is None:
        return ["not measured"] * 2, None
    if spec[0].endswith(".csv"):  # a search row: pick the named row (CL search: the best dev row)
        row = _search_row(spec)
        if row is None or not row.get("gen_right"):
            return ["not measured"] * 2, None
        lost = row["gen_regressions"].split("/")[0]
        return [f"{row['gen_right']}, {lost}", f"{row['perplexity']} ({row['perplexity_change']})"], \
            {"lost": int(lost), "ppl_change": float(row["perplexity_change"].rstrip("%")), "row": row}
    result = data.get(spec[1], data) if spec[1] else data
    if "regressions" not in result:  # the reference itself
        return [f"{result['n_correct']}/{result['n_questions']}, –", f"{result['perplexity']:.2f}"], None
    lost = len(result["regressions"])
    change = 100 * result["perplexity_change"]
    cells = [f"{result['n_correct']}/{result['n_questions']}, {lost}", f"{result['perplexity']:.2f} ({change:+.1f}%)"]
    return cells, {"lost": lost, "ppl_change": change}


def build() -> tuple[str, list[dict]]:
    lines = ["| model | recipe | training | STS-B test, rationale (Δ vs base with rationale, 95%) | "
             "STS-B test, no rationale | dev (200 pairs), r / none | rationale tokens, truncated | "
             "SciFact nDCG@10 (r / none) | "
             "Banking77 acc. (r / none) | generation check: right, lost | perplexity (change) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    points = []
    for row in ROWS:
        sts = _sts_cells(row["sts"])
        transfer = _transfer_cells(row["transfer"])
        gen, g = _gen_cells(row["gen"])
        training = row["training"]
        if g and "row" in g and not training:
            training = f"{g['row'].get('train_minutes', '?')} min: `{g['row'].get('overrides', '')}`"
        dev = _dev_cell(row.get("dev"))
        lines.append(f"| {row['name']} | {row['recipe']} | {training} | {sts[0]} | {sts[1]} | {dev} | {sts[2]} | "
                     f"{transfer[0]} | {transfer[1]} | {gen[0]} | {gen[1]} |")
        best = sts[0].split(" ")[0] if sts[0] != "not measured" else sts[1]
        if best != "not measured" and g is None and row["name"] == "base":
            g = {"lost": 0, "ppl_change": 0.0}
        if best != "not measured" and g is not None:
            points.append({"name": row.get("plot_name", row["name"]), "sts": float(best), "lost": g["lost"],
                           "ppl": g["ppl_change"],
                           "label": row.get("label", "right")})
    return "\n".join(lines) + "\n", points


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    where = {"right": ((5, -4), "left", "top"), "left": ((-6, 0), "right", "center"),
             "above": ((5, 4), "left", "bottom")}
    for p in points:
        name = p["name"].replace("*", "").replace("pure GRACE, ", "")
        ax.scatter(p["lost"], p["sts"], s=40)
        offset, ha, va = where[p["label"]]
        ax.annotate(f"{name}\nperplexity {p['ppl']:+.1f}%", (p["lost"], p["sts"]), fontsize=7, xytext=offset,
                    textcoords="offset points", ha=ha, va=va)
    ax.axvline(1.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("base model's right answers lost (of 37; dashed: the 5% limit)")
    ax.set_ylabel("STS-B test Spearman x100\n(with rationale where measured)")
    ax.set_title("Embedding gained vs generation kept (SmolLM2-135M, CPU; unnamed rows: pure GRACE)",
                 fontsize=10)
    ax.set_xlim(-0.5, max(p["lost"] for p in points) + 4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    table, points = build()
    (RESULTS / "final_table.md").write_text("# One table (generated by `benchmarks/final_table.py`)\n\n" + table)
    if points:
        plot(points, RESULTS / "final_table.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
