"""The report's page: one self-contained index.html (inline CSS, no script, nothing fetched).

Every text that comes from data (class names, labels, file names, params) goes through
html.escape; every image is a PNG file beside the page, referenced by a relative path. A float
cell shows 4 decimals and keeps its full value in `data-value`, so the page can be checked
against the JSON it was made from. (Named page.py, not html.py, so that `import html` inside the
package is always the standard library's.)
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from core.evaluation.report import metrics_rows

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; } .warn { color: #a00; }
.person { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.true { font-weight: bold; color: #1a7f37; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def cell(value: Any, digits: int = 4) -> str:
    """One <td>: floats to `digits` decimals (full value in data-value), None as a dash, the rest escaped."""
    if value is None:
        return "<td>–</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        text = f"{value:.3g}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"
        return f'<td class="num" data-value="{value!r}">{text}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{esc(value)}</td>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    attribute = f' class="{esc(cls)}"' if cls else ""
    return f'<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def img(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def para(text: str, cls: str = "") -> str:
    """A paragraph of already-escaped HTML."""
    return f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>"


# --------------------------------------------------------------------------- sections


def header(report: Mapping[str, Any], mlflow_note: str) -> str:
    model, headline = report["model"], report["evaluation"]["headline"]
    if model["family"] == "rrla":
        boa, bpa = model["boa"], model["bpa"]
        modules = (f"backbone {model['backbone']}; BOA " + (f"{boa['heads']} heads, geometry "
                   f"{'on' if boa['geometry'] else 'off'}" if boa["enabled"] else "off (equal weights)")
                   + f"; BPA {'hidden ' + str(bpa['hidden']) if bpa['enabled'] else 'off'}; "
                   f"ELD {'on' if model['eld']['enabled'] and report['task'] == 'multilabel' else 'off'}; "
                   f"person view: {model['person_view']}")
    else:
        modules = "not rrla: no BOA, BPA or ELD to show"
    return (f"<h1>ctxemo report: {esc(model['family'])} on {esc(report['dataset'])}</h1>"
            + para(f"Model <code>{esc(report['model_dir'])}</code> ({esc(modules)}); task {esc(report['task'])}, "
                   f"{esc(headline.get('num_examples'))} test persons. Written by <code>ctxemo report</code>.", "note")
            + para(esc(mlflow_note), "note"))


def metrics_section(report: Mapping[str, Any]) -> str:
    headline = report["evaluation"]["headline"]
    rows = [(label, value) for label, value in metrics_rows(headline)]
    primary = "mAP" if report["task"] == "multilabel" else "accuracy"
    stated = headline.get(primary)
    check = (f"Scored again for this report (the curves and persons below): test {primary} "
             f"{report['rescored']:.4f}.")
    warn = ""
    if stated is None or abs(report["rescored"] - stated) > 1e-6:
        warn = para(esc(f"It differs from reports/metrics.json ({stated}): the model or the data changed since the "
                        "evaluation; rerun it (`dvc repro evaluate`)."), "warn")
    return ("<h2>Metrics (test)</h2>" + table(["metric", "value"], rows, "metrics")
            + para(esc(check), "note") + warn)


def per_class_section(report: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    details, classes = report["evaluation"]["details"], report["classes"]
    per_class = details.get("per_class", {})
    if report["task"] == "multilabel":
        rows = [(c, per_class.get(c, {}).get("AP"), per_class.get(c, {}).get("F1"),
                 per_class.get(c, {}).get("threshold"), per_class.get(c, {}).get("test_positives")) for c in classes]
        body = ("<h2>Per class</h2>" + img(figures["ap_bars"], "per-class AP")
                + "<h3>Precision-recall curves (test)</h3>" + img(figures["pr_curves"], "precision-recall curves")
                + para("sklearn.metrics.precision_recall_curve on the test scores, one panel per class with a test "
                       "positive, AP in brackets; the points are in <code>pr_curves.npz</code>.", "note")
                + table(["class", "AP", "F1", "threshold (val, P = R)", "test positives"], rows))
        return body
    rows = [(c, per_class.get(c, {}).get("accuracy")) for c in classes]
    return ("<h2>Per class</h2>" + img(figures["confusion"], "confusion matrix")
            + para("Rows: the true class; columns: the predicted one (the evaluation's confusion matrix).", "note")
            + table(["class", "accuracy (recall)"], rows))


def cooccurrence_section(figures: Mapping[str, str]) -> str:
    if "cooccurrence" not in figures:
        return ("<h2>Label co-occurrence</h2>"
                + para("data/graph/cooccurrence.npy or data/labels.json is missing: run the cooccurrence stage.",
                       "note"))
    return ("<h2>Label co-occurrence (Fig. 6)</h2>" + img(figures["cooccurrence"], "label co-occurrence")
            + para("P(label j | label i) on the training split (data/graph/cooccurrence.npy): the matrix ELD's "
                   "label graph is thresholded from.", "note"))


def _predictions_table(person: Mapping[str, Any], task: str) -> str:
    def label(entry: Mapping[str, Any] | None) -> str | None:
        return None if entry is None else ("✓ " if entry["true"] else "") + entry["label"]

    score = "probability" if task == "multiclass" else "score"
    with_eld, without = person["with_eld"], person["without_eld"]
    if without is None:
        rows = [(i + 1, label(e), e["score"]) for i, e in enumerate(with_eld)]
        return table(["rank", "prediction", score], rows)
    rows = [(i + 1, label(a), a["score"], label(b), b["score"]) for i, (a, b) in enumerate(zip(with_eld, without))]
    return table(["rank", "with ELD", score, "without ELD (Â = I)", score], rows)


def person_card(number: int, person: Mapping[str, Any], report: Mapping[str, Any],
                figures: Mapping[str, str]) -> str:
    task = report["task"]
    measure = "per-person AP" if task == "multilabel" else "probability of the true class"
    quality = f"{measure} {person['quality']:.3f}"
    if person["quality_without_eld"] is not None:
        quality += f" (without ELD {person['quality_without_eld']:.3f})"
    parts = [f'<div class="person"><h3>{number}. {esc(person["why"])}: {esc(person["sample_id"])}</h3>',
             para(esc(f"{person['image']}, box {person['box']}; {quality}"), "note"),
             para("true: " + ", ".join(f'<span class="true">{esc(t)}</span>' for t in person["truth"])
                  + ("" if person["predicted"] is None else
                     ("; predicted (val thresholds): " if task == "multilabel" else "; predicted: ")
                     + esc(", ".join(person["predicted"]) or "(none)")))]
    row = [img(figures[f"person_{number}"], f"person {number}")]
    row.append(_predictions_table(person, task))
    parts.append('<div class="row">' + "".join(f"<div>{item}</div>" for item in row) + "</div>")
    if person["top_objects"]:
        parts.append(para("BOA's most attended objects (weight averaged over heads): " + esc(", ".join(
            f"{o['label']} {o['weight']:.3f}" for o in person["top_objects"]))))
    if f"channels_{number}" in figures:
        parts.append(img(figures[f"channels_{number}"], f"BPA channels of person {number}"))
    parts.append("</div>")
    return "".join(parts)


def persons_section(report: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    selection, task = report["selection"], report["task"]
    measure = ("the average precision of the person's own ranking of the classes against their true labels"
               if task == "multilabel" else "the probability (softmax) the model gives the true class")
    rrla = report["model"]["family"] == "rrla"
    intro = (f"{len(report['persons'])} of {report['test_persons']} test persons: the best and the worst predicted "
             f"by {measure}, the rest drawn with seed {selection['seed']} (numpy default_rng permutation). "
             "Image: the person's box and their top predicted emotions (at most 3; else the 3 best scored)"
             + (", with BOA's three most attended objects and their weights (Fig. 10). Heat maps: the three "
                "channels with the highest BPA gate, each that channel of the backbone's final map upsampled "
                "over the person view (Fig. 11)." if rrla else ".")
             + " Table: the top predictions next to the true labels, ✓ marking a true one (Fig. 12).")
    cards = "".join(person_card(number, person, report, figures)
                    for number, person in enumerate(report["persons"], start=1))
    return "<h2>Persons</h2>" + para(esc(intro)) + eld_note(report) + cards


def eld_note(report: Mapping[str, Any]) -> str:
    model = report["model"]
    if model["family"] != "rrla":
        return para(esc(f"The model is {model['family']}: no BOA, BPA or ELD; one column of predictions."), "note")
    off = []
    if not model["boa"]["enabled"]:
        off.append("BOA is off (equal weights over the objects): no attention to draw")
    if not model["bpa"]["enabled"]:
        off.append("BPA is off: no gates, no heat maps")
    return (para(esc("; ".join(off) + "."), "note") if off else "") + _eld_text(report)


def _eld_text(report: Mapping[str, Any]) -> str:
    model = report["model"]
    if report["task"] != "multilabel":
        return para("Single-label data: the model has a linear classifier, not ELD; one column.", "note")
    if not model["eld"]["enabled"]:
        return para("This model has no ELD (model.rrla.eld.enabled: false): one column of predictions.", "note")
    return para(
        "“Without ELD” is the same trained model with ELD's propagation matrix replaced by the identity "
        "(Â = I): each class's classifier is computed from its own label embedding only, σ(Z W⁽⁰⁾) W⁽¹⁾, and "
        "scores the same fused feature F. It removes the label graph's mixing and nothing else; it is not a "
        "model trained without ELD (the <code>no_eld</code> ablation is). A linear probe on F was not used: it "
        "would fit a new classifier, whose own choices would be mixed into the difference.", "note")


# --------------------------------------------------------------------------- the other reports


def _unreadable(name: str, content: Mapping[str, Any]) -> str | None:
    if "unreadable" not in content:
        return None
    return para(esc(f"reports/{name} could not be read: {content['unreadable']}"), "warn")


def compare_section(files: Sequence[tuple[str, Any]]) -> str:
    parts = []
    for name, content in files:
        if (note := _unreadable(name, content)) is not None:
            parts.append(note)
            continue
        rows = content.get("rows", [])
        metric = rows[0].get("metric", "metric") if rows else "metric"
        body = [(r.get("model"), r.get("test"), r.get("baseline"), r.get("beats_baseline"),
                 None if r.get("parameters") is None else f"{r['parameters'] / 1e6:.2f} M",
                 r.get("train_samples_per_s"), r.get("inference_ms_per_person")) for r in rows]
        parts.append(para(esc(f"reports/{name}: {content.get('dataset', '')}, seed {content.get('seed', '')}"), "note")
                     + table(["model", f"test {metric}", "baseline", "beats it", "parameters", "train samples/s",
                              "inference ms/person"], body))
    return "<h2>Comparison of models</h2>" + "".join(parts) if parts else ""


def ablations_section(files: Sequence[tuple[str, Any]]) -> str:
    parts = []
    for name, content in files:
        if (note := _unreadable(name, content)) is not None:
            parts.append(note)
            continue
        rows = content.get("rows", [])
        body = [(r.get("variant"), r.get("seeds"), r.get("test_mAP"), r.get("test_mAP_std"), r.get("val_mAP"),
                 r.get("delta_vs_full"), r.get("full_better_on")) for r in rows]
        parts.append(f"<h3>{esc(name)}</h3>" + table(
            ["variant", "seeds", "test mAP", "std", "val mAP", "gap to full", "full better on"], body))
    return "<h2>Ablations</h2>" + "".join(parts) if parts else ""


def sweeps_section(files: Sequence[tuple[str, Any]], best: int = 5) -> str:
    parts = []
    for name, content in files:
        if (note := _unreadable(name, content)) is not None:
            parts.append(note)
            continue
        rows = sorted((r for r in content.get("rows", []) if r.get("best_val_metric") is not None),
                      key=lambda r: -r["best_val_metric"])[:best]
        space = list(content.get("space", {}))
        header = ["trial", *space, f"best {content.get('metric', 'val')}", "best epoch", "epochs", "status"]
        body = [(r.get("trial_id"), *(r.get(key) for key in space), r.get("best_val_metric"), r.get("best_epoch"),
                 r.get("epochs_run"), r.get("status")) for r in rows]
        how = "; ".join(part for part in (content.get("command"), content.get("adopt") and
                                          f"adopt the best with: {content['adopt']}") if part)
        parts.append(f"<h3>{esc(name)}: {esc(content.get('name', ''))}</h3>"
                     + (para(esc(how), "note") if how else "") + table(header, body))
    return f"<h2>Sweeps: the {best} best trials</h2>" + "".join(parts) if parts else ""


def render(report: Mapping[str, Any], figures: Mapping[str, str], mlflow_note: str) -> str:
    """The whole page."""
    tables = report["tables"]
    sections = [header(report, mlflow_note), metrics_section(report), per_class_section(report, figures)]
    if report["task"] == "multilabel":
        sections.append(cooccurrence_section(figures))
    sections += [persons_section(report, figures), compare_section(tables["compare"]),
                 ablations_section(tables["ablations"]), sweeps_section(tables["sweeps"])]
    title = esc(f"ctxemo report: {report['model']['family']} on {report['dataset']}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>" + "".join(sections) + "</body></html>\n")
