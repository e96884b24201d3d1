"""Tables and reports: scores per task and per MTEB category, models side by side.

The category table has the shape of the GRACE paper's Table 1 (one row per model, one column per
task category, then the average over categories). Reduced runs are labelled in every output.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

CATEGORY_ORDER = ["Classification", "Clustering", "PairClassification", "Reranking", "Retrieval", "STS",
                  "Summarization"]


def _fmt(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _interval(task: dict, label: str) -> str:
    """``45.12 – 55.31`` (×100 like the score), or "" where the task has no interval."""
    ci = (task.get("intervals") or {}).get(label) or {}
    if ci.get("low") is None or ci.get("high") is None:
        return ""
    return f"{_fmt(ci['low'])} – {_fmt(ci['high'])}"


def _n(task: dict) -> str:
    return f"n = {task['n']:,} {task['unit']}" if task.get("n") else "n = ?"


INTERVAL_NOTE = ("95% interval: percentile bootstrap over the task's pairs / queries / examples "
                 "(scipy.stats.bootstrap, 2,000 resamples); Banking77's classifiers stay fixed, so its interval is "
                 "over test examples only.")


def task_label(task: dict) -> str:
    return f"{task['name']}*" if task.get("reduced") else task["name"]


def category_scores(results: dict) -> dict[str, dict[str, float | None]]:
    """{model: {category: mean main score of its tasks, ..., "Avg": mean over categories}}."""
    out = {}
    cats = categories(results)
    for model in results["models"]:
        label = model["label"]
        row = {}
        for cat in cats:
            vals = [t["scores"].get(label) for t in results["tasks"] if t["type"] == cat]
            vals = [v for v in vals if v is not None]
            row[cat] = sum(vals) / len(vals) if vals else None
        present = [v for v in row.values() if v is not None]
        row["Avg"] = sum(present) / len(present) if present else None
        out[label] = row
    return out


def category_columns(results: dict) -> list[str]:
    """The category columns, plus "Avg" only when it averages more than one category (else it repeats it)."""
    cats = categories(results)
    return cats + ["Avg"] if len(cats) > 1 else cats


def reduction_text(task: dict) -> str:
    """``pairs=200, full_pairs=1,379, seed=42`` for a reduced task's settings, readable in every report."""
    return ", ".join(f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
                     for k, v in (task.get("reduction") or {}).items())


def has_intervals(results: dict) -> bool:
    return any(_interval(t, m["label"]) for t in results["tasks"] for m in results["models"])


def categories(results: dict) -> list[str]:
    types = {t["type"] for t in results["tasks"]}
    return [c for c in CATEGORY_ORDER if c in types] + sorted(types - set(CATEGORY_ORDER))


def markdown_tables(results: dict) -> str:
    labels = [m["label"] for m in results["models"]]
    lines = ["### Scores per task (main score × 100)", ""]
    lines.append("| model | " + " | ".join(f"{task_label(t)} ({t['main_score']}, {_n(t)})"
                                           for t in results["tasks"]) + " |")
    lines.append("|---" * (len(results["tasks"]) + 1) + "|")
    for label in labels:
        cells = []
        for t in results["tasks"]:
            ci = _interval(t, label)
            cells.append(_fmt(t["scores"].get(label)) + (f" ({ci})" if ci else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if has_intervals(results):
        lines += ["", "In brackets: " + INTERVAL_NOTE]
    cats = category_columns(results)
    cat = category_scores(results)
    lines += ["", "### Scores per category (mean of tasks; Avg = mean of categories)", ""]
    lines.append("| model | " + " | ".join(cats) + " |")
    lines.append("|---" * (len(cats) + 1) + "|")
    for label in labels:
        cells = " | ".join(_fmt(cat[label][c]) for c in cats)
        lines.append(f"| {label} | {cells} |")
    reduced = [t for t in results["tasks"] if t.get("reduced")]
    if reduced:
        lines += ["", "\\* reduced run (`--limit`), NOT comparable with the MTEB leaderboard:"]
        for t in reduced:
            lines.append(f"- {t['name']}: {reduction_text(t)}")
    lines += ["", "Models:"]
    if results.get("system_prompt_override") is not None or any(
            m["settings"].get("system_prompt") == "override" for m in results["models"]):
        lines.append(f"- system prompt for every causal LM (override): {results.get('system_prompt_override')!r}")
    for m in results["models"]:
        lines.append(f"- **{m['label']}**: `{m['path']}` " + ", ".join(f"{k}={v}" for k, v in m["settings"].items()))
    gen = results.get("generation_check")
    if gen:
        lines += ["", "### Does it still write? (generation check)", "",
                  "Greedy answers to fixed questions with known one-word answers, and perplexity on held-out text "
                  "(lower is better). Regressions: questions the first model answers right and this one gets wrong; "
                  "kept: at most 5% of those lost and perplexity within +2%.", ""]
        lines.append("| model | answers right | regressions | gained | perplexity | kept |")
        lines.append("|---|---|---|---|---|---|")
        for label, g in gen.items():
            lines.append(generation_row(label, g))
        for label, g in gen.items():
            wrong = {q for q in g.get("regressions", [])}
            if wrong:
                lines += ["", f"Regressions of **{label}**:"]
                for qa in g["answers"]:
                    if qa["question"] in wrong:
                        lines.append(f"- *{qa['question']}* → {qa['answer'].replace(chr(10), ' ')[:200]}")
    return "\n".join(lines) + "\n"


def generation_cells(g: dict) -> list[str]:
    """answers right, regressions, gained, perplexity (change), kept: one model's generation check."""
    right = f"{g['n_correct']}/{g['n_questions']}" if "n_correct" in g else "–"
    if "regressions" in g:
        lost = f"{len(g['regressions'])}/{g['reference_correct']} ({100 * g['regression_rate']:.1f}%)"
        gained = str(len(g["gains"]))
        ppl = f"{g['perplexity']:.2f} ({100 * g['perplexity_change']:+.1f}%)"
        kept = "yes" if g.get("kept") else "no"
    else:
        lost, gained, ppl, kept = "– (reference)", "–", f"{g['perplexity']:.2f}", "–"
    return [right, lost, gained, ppl, kept]


def generation_row(label: str, g: dict) -> str:
    return "| " + " | ".join([label, *generation_cells(g)]) + " |"


def text_table(results: dict) -> str:
    """Plain-text tables for the terminal."""
    labels = [m["label"] for m in results["models"]]
    width = max([len(x) for x in labels] + [5]) + 2
    out = []
    cols = [task_label(t) for t in results["tasks"]]
    colw = max([len(c) for c in cols] + [8]) + 2
    out.append("Per task (main score x 100):")
    out.append("model".ljust(width) + "".join(c.rjust(colw) for c in cols))
    for label in labels:
        out.append(label.ljust(width) + "".join(_fmt(t["scores"].get(label)).rjust(colw) for t in results["tasks"]))
    cats = category_columns(results)
    cat = category_scores(results)
    catw = max([len(c) for c in cats] + [8]) + 2
    out.append("")
    out.append("Per category:")
    out.append("model".ljust(width) + "".join(c.rjust(catw) for c in cats))
    for label in labels:
        out.append(label.ljust(width) + "".join(_fmt(cat[label][c]).rjust(catw) for c in cats))
    if any(t.get("reduced") for t in results["tasks"]):
        out.append("* reduced run (--limit): not comparable with the MTEB leaderboard")
    return "\n".join(out)


def bar_plot(results: dict):
    """The category scores as grouped bars; the legend sits below the axes, where it cannot cover a bar."""
    import matplotlib.pyplot as plt
    import numpy as np

    cats = category_columns(results)
    cat = category_scores(results)
    labels = [m["label"] for m in results["models"]]
    x = np.arange(len(cats))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(cats) + 1), 3.6))
    for i, label in enumerate(labels):
        vals = [100 * (cat[label][c] or 0.0) for c in cats]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(x, cats)
    ax.set_ylabel("score × 100")
    title = "MTEB category scores"
    if any(t.get("reduced") for t in results["tasks"]):
        title += " (reduced run)"
    ax.set_title(title)
    # below the axes, so no legend box hides a bar
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(labels), 3), frameon=False)
    fig.tight_layout()
    return fig


def bar_plot_png(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = bar_plot(results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def html_report(results: dict, png: bytes | None) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>grace-trl evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}td.num{text-align:right}.r{color:#a00}"
             ".rat{font-size:90%;color:#333;white-space:pre-wrap}</style></head><body>",
             "<h1>grace-trl evaluation</h1>"]
    if any(t.get("reduced") for t in results["tasks"]):
        parts.append("<p class='r'><b>Reduced run (--limit):</b> scores are NOT comparable with the MTEB "
                     "leaderboard.</p>")
    if results.get("system_prompt_override") is not None:
        parts.append("<p><b>System prompt override</b> (every model embeds with it, not with its own):</p>"
                     f"<pre class='rat'>{e(results['system_prompt_override'] or '(none)')}</pre>")
    labels = [m["label"] for m in results["models"]]
    parts.append("<h2>Per task</h2><table><tr><th>model</th>" + "".join(
        f"<th>{e(task_label(t))}<br><small>{e(t['main_score'])}, {e(_n(t))}</small></th>"
        for t in results["tasks"]) + "</tr>")
    for label in labels:
        cells = []
        for t in results["tasks"]:
            ci = _interval(t, label)
            ci_html = f"<br><small class='ci'>{e(ci)}</small>" if ci else ""
            cells.append(f"<td class='num'>{_fmt(t['scores'].get(label))}{ci_html}</td>")
        parts.append(f"<tr><td>{e(label)}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    if has_intervals(results):
        parts.append(f"<p><small>Under each score: its {e(INTERVAL_NOTE)}</small></p>")
    elif any(t.get("intervals") is not None for t in results["tasks"]):
        parts.append("<p><small>No 95% interval: too few items for the bootstrap to vary the score.</small></p>")
    cats = category_columns(results)
    cat = category_scores(results)
    header = "".join(f"<th>{e(c)}</th>" for c in cats)
    parts.append(f"<h2>Per category</h2><table><tr><th>model</th>{header}</tr>")
    for label in labels:
        cells = "".join(f"<td class='num'>{_fmt(cat[label][c])}</td>" for c in cats)
        parts.append(f"<tr><td>{e(label)}</td>{cells}</tr>")
    parts.append("</table>")
    if png:
        data = base64.b64encode(png).decode()
        parts.append(f"<p><img alt='category scores' src='data:image/png;base64,{data}'></p>")
    for t in results["tasks"]:
        if t.get("reduced"):
            parts.append(f"<p><small>{e(t['name'])} reduction: {e(reduction_text(t))}</small></p>")
    keys = list(dict.fromkeys(k for m in results["models"] for k in m["settings"]))
    parts.append("<h2>Models</h2><table><tr><th>model</th><th>path</th>" +
                 "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
    for m in results["models"]:
        parts.append(f"<tr><td><b>{e(m['label'])}</b></td><td><code>{e(m['path'])}</code></td>" + "".join(
            f"<td>{e(str(m['settings'].get(k, '')))}</td>" for k in keys) + "</tr>")
    parts.append("</table>")
    samples = results.get("samples") or {}
    for label, pairs in samples.items():
        parts.append(f"<h2>Sample STS pairs — {e(label)}</h2><table><tr><th>gold (0-5)</th><th>cosine</th>"
                     "<th>text 1 / rationale</th><th>text 2 / rationale</th></tr>")
        for p in pairs:
            cut = p.get("truncated") or [False, False]
            mark = ["<div class='r'><small>truncated: hit max_new_tokens without EOS</small></div>" if c else ""
                    for c in cut]
            parts.append(
                f"<tr><td class='num'>{p['gold']:.2f}</td><td class='num'>{p['cosine']:.3f}</td>"
                f"<td><b>{e(p['text1'])}</b><div class='rat'>{e(p['rationale1'])}</div>{mark[0]}</td>"
                f"<td><b>{e(p['text2'])}</b><div class='rat'>{e(p['rationale2'])}</div>{mark[1]}</td></tr>")
        parts.append("</table>")
        if any(any(p.get("truncated") or []) for p in pairs):
            parts.append("<p><small>A truncated rationale is embedded as generated (cut at max_new_tokens)."
                         "</small></p>")
    gen = results.get("generation_check")
    if gen:
        parts.append("<h2>Does it still write? (generation check)</h2>"
                     "<p>Regressions: questions the first model answers right and this one gets wrong.</p>"
                     "<table><tr><th>model</th><th>answers right</th><th>regressions</th><th>gained</th>"
                     "<th>perplexity (held-out text)</th><th>kept</th></tr>")
        for label, g in gen.items():
            cells = generation_cells(g)
            parts.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td class='num'>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        for label, g in gen.items():
            parts.append(f"<h3>Greedy answers: {e(label)}</h3><ul>")
            wrong = set(g.get("regressions", []))
            for qa in g["answers"]:
                mark = " <b>(regression)</b>" if qa["question"] in wrong else ""
                parts.append(f"<li><i>{e(qa['question'])}</i>{mark}<br>{e(qa['answer'])}</li>")
            parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(results: dict, output_dir: str | Path, html_output: bool = True) -> dict[str, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["markdown"].write_text(markdown_tables(results), encoding="utf-8")
    if html_output:
        png = bar_plot_png(results)
        paths["png"] = out / "scores.png"
        paths["png"].write_bytes(png)
        paths["html"] = out / "report.html"
        paths["html"].write_text(html_report(results, png), encoding="utf-8")
    return paths
