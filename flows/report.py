"""One self-contained HTML report per run: what was built, what was thrown away, how
good it is. Plots are PNGs embedded as base64, so the file travels alone.

Reads only files of the run directory (stage markers, filter metrics and decisions,
generated chunks, training history, evaluation JSON); never re-computes a stage.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import numpy as np

from facefoundry.flows.run_dir import RunDir
from facefoundry.flows.stage_table import STAGE_NAMES

logger = logging.getLogger(__name__)


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(width: float = 5.5, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _find_distributions(node, found: list, trail: str = "") -> list:
    """(label, genuine, impostor) for every dict holding genuine+impostor histograms."""
    if isinstance(node, dict):
        genuine, impostor = node.get("genuine"), node.get("impostor")
        if isinstance(genuine, dict) and "histogram" in genuine and isinstance(impostor, dict):
            found.append((trail.strip("/") or "all", genuine, impostor))
        for key, value in node.items():
            if key not in ("genuine", "impostor"):
                _find_distributions(value, found, f"{trail}/{key}")
    return found


def histogram_plot(label: str, genuine: dict, impostor: dict) -> str:
    figure, axis = _figure()
    for name, dist, colour in (
        ("genuine", genuine, "tab:green"),
        ("impostor", impostor, "tab:red"),
    ):
        edges = np.array(dist["histogram"]["edges"])
        counts = np.array(dist["histogram"]["counts"], dtype=float)
        if counts.sum():
            axis.stairs(
                counts / counts.sum(),
                edges,
                label=f"{name} (n={dist.get('n')})",
                color=colour,
                fill=True,
                alpha=0.4,
            )
    axis.set_xlabel("cosine similarity")
    axis.set_ylabel("share of pairs")
    axis.set_title(label)
    axis.legend()
    return _png(figure)


def funnel_plot(funnel) -> str | None:
    rows = _funnel_rows(funnel)
    if not rows:
        return None
    figure, axis = _figure(6, 0.4 * len(rows) + 1)
    labels = [r[0] for r in rows]
    axis.barh(labels[::-1], [r[1] for r in rows][::-1], color="tab:blue")
    axis.set_xlabel("removed (samples or identities, by rule)")
    return _png(figure)


def _funnel_rows(funnel) -> list[tuple[str, float, str]]:
    """(rule, removed, detail) rows of the filter funnel: sample rules, then identity rules
    (``{"samples": {"input", "steps": [{rule, removed, remaining}]}, "identities": ...}``)."""
    rows = []
    if not isinstance(funnel, dict):
        return rows
    for level in ("samples", "identities"):
        section = funnel.get(level)
        if not isinstance(section, dict):
            continue
        for step in section.get("steps", []):
            rows.append(
                (
                    f"{level}: {step.get('rule')}",
                    float(step.get("removed") or 0),
                    f"{step.get('remaining')} {level} remain",
                )
            )
    return rows


def per_identity_plot(decisions_path: Path) -> str | None:
    import pyarrow.parquet as pq

    if not decisions_path.is_file():
        return None
    table = pq.read_table(decisions_path, columns=["identity", "kept"]).to_pylist()
    kept: dict[int, int] = {}
    for row in table:
        kept.setdefault(row["identity"], 0)
        kept[row["identity"]] += int(bool(row["kept"]))
    counts = np.array(list(kept.values()))
    figure, axis = _figure()
    axis.hist(
        counts, bins=np.arange(counts.max() + 2) - 0.5 if len(counts) else 10, color="tab:purple"
    )
    axis.set_xlabel("kept images per identity")
    axis.set_ylabel("identities")
    return _png(figure)


def sample_grid(run_dir: Path, kept: bool, rows: int = 4, columns: int = 8) -> tuple[str, str]:
    """A grid of kept (one identity per row) or rejected samples (with reasons)."""
    import pyarrow.parquet as pq
    from PIL import Image

    from facefoundry.shards.tarformat import iter_members

    decisions_path = RunDir(run_dir).filter_decisions
    if not decisions_path.is_file():
        return "", ""
    decisions = pq.read_table(
        decisions_path, columns=["key", "identity", "kept", "reject_reason"]
    ).to_pylist()
    chosen: list[dict] = []
    if kept:
        by_identity: dict[int, list[dict]] = {}
        for row in decisions:
            if row["kept"]:
                by_identity.setdefault(row["identity"], []).append(row)
        for identity in sorted(by_identity)[:rows]:
            chosen.extend(by_identity[identity][:columns])
    else:
        chosen = [row for row in decisions if not row["kept"]][: rows * columns]
    wanted = {row["key"] for row in chosen}
    images: dict[str, bytes] = {}
    for tar in RunDir(run_dir).generate_tars():
        with open(tar, "rb") as handle:
            for member in iter_members(handle, source=str(tar), max_member_bytes=64 << 20):
                stem = member.name.rpartition(".")[0]
                if stem in wanted and member.name.endswith(".jpg"):
                    images[stem] = member.data
    tiles = [(row, images.get(row["key"])) for row in chosen if images.get(row["key"])]
    if not tiles:
        return "", ""
    size = 80
    grid_rows = (len(tiles) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * size, grid_rows * size), (255, 255, 255))
    for index, (_, data) in enumerate(tiles):
        tile = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
        canvas.paste(tile, ((index % columns) * size, (index // columns) * size))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    reasons: dict[str, int] = {}
    for row, _ in tiles:
        reasons[str(row["reject_reason"])] = reasons.get(str(row["reject_reason"]), 0) + 1
    caption = (
        "one synthetic identity per row"
        if kept
        else "rejected samples; reasons: " + ", ".join(f"{k} x{v}" for k, v in reasons.items())
    )
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), caption


def training_plot(history: list[dict]) -> str | None:
    if not history:
        return None
    figure, axis = _figure()
    epochs = [h["epoch"] for h in history]
    axis.plot(epochs, [h["loss"] for h in history], marker="o", label="train loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    points = [(h["epoch"], 100 * h["val_accuracy"]) for h in history if "val_accuracy" in h]
    if points:
        right = axis.twinx()
        right.plot(*zip(*points, strict=True), color="tab:orange", marker="s")
        right.set_ylabel("LFW accuracy %", color="tab:orange")
    return _png(figure)


def roc_plot(evaluations: dict[str, dict]) -> str | None:
    curves = {k: v["roc"] for k, v in evaluations.items() if isinstance(v.get("roc"), dict)}
    if not curves:
        return None
    figure, axis = _figure()
    for name, roc in curves.items():
        axis.plot(np.maximum(roc["far"], 1e-4), roc["tar"], label=name)
    axis.set_xscale("log")
    axis.set_xlabel("false accept rate")
    axis.set_ylabel("true accept rate")
    axis.legend()
    return _png(figure)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(src: str | None, caption: str = "") -> str:
    if not src:
        return ""
    return f'<figure><img src="{src}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def summarise(run_dir: Path) -> dict:
    """The key figures of a run (also used for Prefect artifacts)."""
    run = RunDir(run_dir)
    markers = {s: _json(run.marker(s)) for s in STAGE_NAMES}
    evaluations = {p.stem: _json(p) for p in run.evaluate_results()}
    shards = markers.get("shards") or {}
    verdict = []
    candidates = shards.get("samples")
    if candidates is not None:
        verdict.append(
            f"{shards.get('kept', 0)} of {candidates} candidate images kept, "
            f"{shards.get('classes', 0)} identities."
        )
        if not shards.get("classes") or shards.get("classes", 0) < 2:
            verdict.append(
                "Too few identities survived filtering to train a recognizer: "
                "the generator is not producing usable faces yet (see the funnel)."
            )
    funnel = (_json(run.filter_metrics) or {}).get("funnel") or {}
    identities = funnel.get("identities") if isinstance(funnel, dict) else None
    if isinstance(identities, dict) and identities.get("input"):
        total, kept = identities["input"], identities.get("kept", 0)
        steps = [s for s in identities.get("steps", []) if s.get("removed")]
        worst = max(steps, key=lambda s: s["removed"]) if steps else None
        line = f"{kept} of {total} synthetic identities survived filtering"
        if worst:
            line += f"; the largest cut: {worst['rule']} removed {worst['removed']}"
        if kept < 0.5 * total:
            line += (
                ". Most identities were lost: the generator does not yet produce "
                "consistent, separable identities, so accuracy below reflects that"
            )
        verdict.append(line + ".")
    for name, figures in evaluations.items():
        if isinstance(figures, dict) and "accuracy" in figures:
            verdict.append(
                f"{name}: {100 * figures['accuracy']:.2f}% +- {100 * figures['accuracy_std']:.2f}"
            )
    return {"markers": markers, "evaluations": evaluations, "verdict": verdict}


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``run_dir/report/report.html`` (or ``out``) and return its path."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    out = Path(out) if out else run.report
    summary = summarise(run_dir)
    markers, evaluations = summary["markers"], summary["evaluations"]
    recipe_text = run.recipe.read_text() if run.recipe.is_file() else ""
    parts = [
        f"<h1>facefoundry run: {html.escape(run_dir.name)}</h1>",
        "<p class=verdict>" + "<br>".join(html.escape(v) for v in summary["verdict"]) + "</p>",
    ]
    parts.append(
        "<h2>Stages</h2>"
        + _table(
            ["stage", "state", "seconds", "inputs hash", "notes"],
            [
                [
                    s,
                    "done" if m else "not run",
                    (m or {}).get("seconds", ""),
                    (m or {}).get("inputs_hash", ""),
                    (m or {}).get("skipped_reason") or (m or {}).get("empty") or "",
                ]
                for s, m in markers.items()
            ],
        )
    )
    comparison = _json(run.stage("compare") / "comparison.json")
    if isinstance(comparison, dict):
        from facefoundry.evaluation.compare_real import curves_plot

        def _acc(side: str, name: str) -> str:
            figures = (comparison.get(side) or {}).get(name)
            if not figures:
                return ""
            return f"{100 * figures['accuracy']:.1f}% &plusmn; {100 * (figures['std'] or 0):.1f}"

        parts.append(
            "<h2>Synthetic vs real at equal scale</h2>"
            f"<p class=verdict>{html.escape(comparison.get('verdict', ''))}</p>"
            + _table(
                ["", "synthetic", f"real LFW DevTrain ({comparison.get('real_rule')})"],
                [
                    [
                        "identities",
                        comparison.get("identities_synthetic"),
                        comparison.get("identities_real"),
                    ],
                    ["images", comparison.get("images_synthetic"), comparison.get("images_real")],
                    ["LFW DevTest", _acc("synthetic", "devtest"), _acc("real", "devtest")],
                    ["LFW View 2", _acc("synthetic", "view2"), _acc("real", "view2")],
                ],
            )
        )
        twin = comparison.get("real_twin") or {}
        if twin.get("reused"):
            parts.append(
                f"<p>The real side was restored from a finished twin (same people, trainer, "
                f"evaluation and code) made by run {html.escape(str(twin.get('made_by')))}: "
                f"<code>$FACEFOUNDRY_CACHE_DIR/real-twins/{html.escape(str(twin['key']))}"
                "</code>.</p>"
            )
        figure = curves_plot(comparison)
        parts.append(
            _img(_png(figure) if figure else None, "LFW DevTest accuracy per epoch, both trainers")
        )
    probes = _json(run.identities.parent / "probe_funnel.json")
    if isinstance(probes, dict):
        parts.append(
            "<h2>Realised identities (probe funnel)</h2><p>Each candidate identity was "
            "probed (its first samples) before bulk generation and kept only if its probe "
            "is a usable face separated from the kept ones (cosine &le; "
            f"{probes.get('separation', probes.get('tau_inter', '?'))}"
            + (
                ": the tightest separation that keeps the count wanted"
                if "separation" in probes
                else ""
            )
            + ").</p>"
            + _table(["step", "candidates"], [[k, v] for k, v in probes.items()])
        )
    metrics = _json(run.filter_metrics) or {}
    if metrics:
        parts.append("<h2>Filtering</h2>")
        rows = _funnel_rows(metrics.get("funnel"))
        if rows:
            parts.append(
                _table(
                    ["rule", "samples removed", "detail"], [[r[0], int(r[1]), r[2]] for r in rows]
                )
            )
        parts.append(_img(funnel_plot(metrics.get("funnel")), "what each rule removed"))
        parts.append(_distinct_paragraph(metrics.get("judge_distinct")))
        for label, genuine, impostor in _find_distributions(metrics.get("metrics", {}), []):
            parts.append(
                _img(
                    histogram_plot(label, genuine, impostor), f"genuine vs impostor cosine, {label}"
                )
            )
        parts.append(
            _img(
                per_identity_plot(run.filter_decisions),
                "kept images per identity",
            )
        )
        for kept in (True, False):
            grid, caption = sample_grid(run_dir, kept)
            parts.append(("<h3>kept</h3>" if kept else "<h3>rejected</h3>") + _img(grid, caption))
    history = _json(run.train_history)
    if history:
        parts.append("<h2>Training</h2>" + _img(training_plot(history), "loss and LFW accuracy"))
    if evaluations:
        parts.append(
            "<h2>Verification</h2>"
            + _table(
                ["benchmark", "accuracy %", "std", "AUC", "EER %", "TAR@FAR=1e-3 %", "pairs"],
                [
                    [
                        k,
                        f"{100 * v['accuracy']:.2f}",
                        f"{100 * v['accuracy_std']:.2f}",
                        f"{v['auc']:.4f}",
                        f"{100 * v['eer']:.2f}",
                        f"{100 * v['tar_at_far_1e-3']:.2f}",
                        v["pairs"],
                    ]
                    for k, v in evaluations.items()
                    if isinstance(v, dict)
                ],
            )
        )
        parts.append(_img(roc_plot(evaluations), "ROC"))
    parts.append("<h2>Recipe</h2><pre>" + html.escape(recipe_text) + "</pre>")
    style = (
        "body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        ".verdict{font-size:16px;background:#f4f4f4;padding:8px}figure{display:inline-block}"
    )
    document = (
        f"<!doctype html><html><head><meta charset=utf-8><title>facefoundry "
        f"{html.escape(run_dir.name)}</title><style>{style}</style></head><body>"
        + "\n".join(p for p in parts if p)
        + "</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document)
    return out


def _distinct_paragraph(distinct: dict | None) -> str:
    """The judge's count of distinct kept identities (``filters.distinct``), in words."""
    if not distinct:
        return ""
    if "skipped" in distinct:
        why = html.escape(str(distinct["skipped"]))
        return f"<p>Distinct by the judge: not measured ({why}).</p>"
    return (
        f"<p>Distinct by the judge: <b>{distinct['distinct_identities']}</b> of the "
        f"{distinct['kept_identities']} kept identities ({100 * distinct['share']:.0f}%) "
        f"remain apart when {html.escape(distinct['judge'])}, which did not filter, applies the "
        f"same de-duplication at its own threshold for the same false-match rate "
        f"(FMR {distinct['fmr']:.0e}, cosine {distinct['tau']:.3f}). For dlib at FMR 1e-4, "
        "of 100 real LFW people with 4-8 photos each about 82 stay apart at full resolution "
        "and 48 as 32 px faces (dlib merges low-resolution faces): compare with real faces "
        "at your generator's resolution; a share far below theirs means identities only "
        "the filter's embedder tells apart.</p>"
    )
