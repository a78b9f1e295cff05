"""tools/reference_docs.py rewrites the README's console excerpt and reference figures from one
kept clone of the reference run: its rules on a small synthetic log and model card, and the
committed README against the committed reports (reports/metrics.json, reports/model_card.md),
so the figures it quotes cannot disagree with them."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


reference_docs = load_tool("reference_docs")
reference_screenshots = load_tool("reference_screenshots")

PROJECT = "/tmp/pneumonia-quality-abc/repo"
PROGRESS = "  epoch 1/2: 83/139 batches (60%), 00:30 elapsed, ETA 00:20, loss 0.3116"


def epoch(number: int, total: int, indent: str = "  ") -> str:
    return (
        f"{indent}epoch {number}/{total}: loss 0.{number}000, auc 0.9500, val_loss 0.1000, "
        f"val_auc 0.98{number}0 (00:30)"
    )


def trial(number: int, total: int) -> list[str]:
    return [
        f"trial {number}/{total}: optimizer adam, base_filters 16, batch_size 32",
        PROGRESS,
        epoch(1, 2),
        epoch(2, 2),
        f"trial {number}/{total}: val_auc 0.98{number}0 (epoch 2) in 01:0{number}",
    ]


def synthetic_log(trials: int = 4, epochs: int = 8, members: int = 1) -> str:
    """A `dvc repro` log in the shape DVC and the stages write it."""
    fit = [f"final fit of trial {trials}: {members} member(s), up to {epochs} epoch(s) each"]
    for member in range(1, members + 1):
        indent = "  " if members == 1 else "    "
        if members > 1:
            fit.append(f"  member {member}/{members}")
        for number in range(1, epochs + 1):
            fit += [f"{indent}epoch {number}/{epochs}: 1/70 batches (1%), 00:30 elapsed"]
            fit.append(epoch(number, epochs, indent))
    lines = [
        "Running stage 'validate':",
        "> python stages/validate.py",
        "validate: params.yaml OK",
        "Updating lock file 'dvc.lock'",
        "",
        "Running stage 'preprocess':",
        "> python stages/preprocess.py",
        f"preprocess: 1296 images/s -> {PROJECT}/data/processed (train 4434 images)",
        "Updating lock file 'dvc.lock'",
        "",
        "Running stage 'train':",
        "> python stages/train.py",
        f"tuning: {trials} trial(s) of 2 epoch(s) on val_auc, study train@abc-123, at most 15:00",
        *(line for number in range(1, trials + 1) for line in trial(number, trials)),
        *fit,
        f"final fit: {members} member(s) in 04:38",
        "shift check: val AUC 0.9922 on average under the shifts (lowest 0.9837) in 00:16",
        "Updating lock file 'dvc.lock'",
        "",
        "Running stage 'evaluate':",
        "> python stages/evaluate.py",
        "evaluate: threshold 0.9492 (youden, chosen on val); test roc_auc 0.939 [0.917, 0.957]",
        "Updating lock file 'dvc.lock'",
        "",
        "To track the changes with git, run:",
        "",
        "\tgit add dvc.lock",
        "Use `dvc push` to send your updates to remote storage.",
    ]
    return "\n".join(lines) + "\n"


def test_the_excerpt_keeps_the_last_stages_and_cuts_trials_epochs_and_progress() -> None:
    excerpt = reference_docs.console_excerpt(synthetic_log(), PROJECT).splitlines()
    assert excerpt[0] == "Running stage 'preprocess':"  # the data stages before it are left out
    assert "<project>/data/processed" in excerpt[2]
    assert not any(PROJECT in line or "elapsed" in line for line in excerpt)
    assert not any(line.startswith(("Updating lock", "To track", "Use `dvc")) for line in excerpt)
    assert excerpt[-1].startswith("evaluate: threshold 0.9492")
    trials = [line for line in excerpt if re.match(r"trial \d/4: val_auc", line)]
    assert trials == [trial(1, 4)[-1], trial(4, 4)[-1]]
    # Trial 1 whole, then one elision for trials 2 and 3, then trial 4 whole.
    first_end = excerpt.index(trial(1, 4)[-1])
    assert excerpt[first_end + 1] == "..."
    assert excerpt[first_end + 2] == trial(4, 4)[0]
    fit = excerpt.index("final fit of trial 4: 1 member(s), up to 8 epoch(s) each")
    assert excerpt[fit + 1 : fit + 6] == [
        epoch(1, 8),
        "  ...",
        epoch(6, 8),
        epoch(7, 8),
        epoch(8, 8),
    ]
    assert excerpt[fit + 6] == "final fit: 1 member(s) in 04:38"
    assert excerpt.count("") == 2  # one blank line between stages


def test_short_runs_are_shown_whole_and_each_member_is_cut_alone() -> None:
    short = reference_docs.console_excerpt(synthetic_log(trials=2, epochs=4), PROJECT)
    assert "\n...\n" not in short and "  ..." not in short
    assert all(epoch(number, 4) in short.splitlines() for number in range(1, 5))
    members = reference_docs.console_excerpt(synthetic_log(members=2), PROJECT).splitlines()
    assert members.count("    ...") == 2
    second = members.index("  member 2/2")
    assert members[second + 1 : second + 3] == [epoch(1, 8, "    "), "    ..."]


def test_a_stage_after_evaluate_is_shown_too() -> None:
    later = "Running stage 'site':\n> python stages/site.py\nsite: ready\n"
    later += "Updating lock file 'dvc.lock'\n"
    log = synthetic_log().replace("\nTo track the changes", f"\n{later}\nTo track the changes")
    excerpt = reference_docs.console_excerpt(log, PROJECT).splitlines()
    assert excerpt[-4:] == ["", "Running stage 'site':", "> python stages/site.py", "site: ready"]


def test_a_log_without_the_stages_is_refused() -> None:
    with pytest.raises(ValueError, match="no `Running stage` line for train, evaluate"):
        reference_docs.console_excerpt("Running stage 'preprocess':\n> python x\n", PROJECT)


def test_the_first_epoch_is_trial_one_s() -> None:
    assert reference_docs.first_epoch(synthetic_log()) == "loss 0.1000, val AUC 0.9810"
    with pytest.raises(ValueError, match="no first epoch of trial 1"):
        reference_docs.first_epoch("Running stage 'train':\n")


CARD = """\
# Model card

## Performance on the test split

At the operating threshold 0.4000, with 95% confidence intervals from 20 bootstrap resamples:

- ROC AUC 0.900 (95% CI 0.850-0.950)
- Sensitivity 0.800 (95% CI 0.700-0.900)
- Specificity 0.700 (95% CI 0.600-0.800)
- Accuracy 0.750 (95% CI 0.700-0.800)
- Confusion: 40 true positives, 10 false negatives (missed pneumonia), 35 true negatives, 15 \
false positives (normals called pneumonia).

On val, at the same threshold:

- ROC AUC 0.990 (95% CI 0.980-0.995)
- Specificity 0.950 (95% CI 0.900-0.990)

## Operating threshold

- Specificity 0.111 (95% CI 0.100-0.200)
"""
METRICS = {
    "roc_auc": 0.9001,
    "sensitivity": 0.8,
    "specificity": 0.7,
    "accuracy": 0.75,
    "threshold": 0.4,
    "val_roc_auc": 0.9899,
}


def test_the_figures_come_from_metrics_json_and_the_card() -> None:
    fragments = reference_docs.render_figures(reference_docs.reference_figures(METRICS, CARD))
    assert fragments["confusion"] == "35/15/10/40"
    assert fragments["val"] == "Val ROC AUC is 0.990 and val specificity 0.950"
    assert fragments["quick-start"] == "test ROC AUC 0.900 and specificity 0.700"
    assert fragments["results"] == (
        "test ROC AUC 0.900 [0.850, 0.950], and at its val-chosen threshold (0.400) sensitivity "
        "0.800 [0.700, 0.900] but specificity 0.700 [0.600, 0.800]; val ROC AUC 0.990"
    )


def test_a_card_of_another_run_or_without_its_section_is_refused() -> None:
    with pytest.raises(ValueError, match=r"test_roc_auc 0\.900 is not metrics\.json's 0\.910"):
        reference_docs.reference_figures({**METRICS, "roc_auc": 0.91}, CARD)
    with pytest.raises(ValueError, match="no `## Performance on the test split` section"):
        reference_docs.reference_figures(METRICS, "# Model card\n")
    without_confusion = CARD.replace("- Confusion:", "- Counts:")
    with pytest.raises(ValueError, match="fragment 'confusion' needs 'true_negative'"):
        reference_docs.render_figures(reference_docs.reference_figures(METRICS, without_confusion))


def test_only_the_marked_fragments_are_rewritten() -> None:
    text = "a <!-- reference:x -->old<!-- /reference:x --> b\n<!-- reference:y -->\n1\n"
    text += "<!-- /reference:y -->"
    rewritten = reference_docs.replace_fragments(text, {"x": "new", "y": "\n2\n"})
    assert rewritten == text.replace(">old<", ">new<").replace("\n1\n", "\n2\n")
    with pytest.raises(ValueError, match=r"markers missing for \['z'\], unknown markers none"):
        reference_docs.replace_fragments(text, {"x": "", "y": "", "z": ""})
    with pytest.raises(ValueError, match=r"markers missing for none, unknown markers \['y'\]"):
        reference_docs.replace_fragments(text, {"x": ""})


# The committed README against the committed reports: what the tool would write from them.
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
COMMITTED_METRICS = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
COMMITTED_CARD = (REPO_ROOT / "reports" / "model_card.md").read_text(encoding="utf-8")


def test_the_readme_marks_every_generated_part() -> None:
    marked = reference_docs.fragments_of(README)
    assert set(marked) == {*reference_docs.FIGURES, "console", "first-epoch"}
    assert marked["console"].startswith("\n```text\nRunning stage 'preprocess':\n")


def test_the_readme_figures_are_the_committed_reports() -> None:
    fields = reference_docs.reference_figures(COMMITTED_METRICS, COMMITTED_CARD)
    marked = reference_docs.fragments_of(README)
    for name, fragment in reference_docs.render_figures(fields).items():
        assert marked[name] == fragment, f"run {reference_docs.TOOL} CLONE (README: {name})"
    # The excerpt's evaluate line is the same run's, and so is the first epoch quoted above it.
    console = marked["console"]
    assert f"threshold {COMMITTED_METRICS['threshold']:.4f} (" in console
    assert f"test roc_auc {fields['test_roc_auc']} {fields['test_roc_auc_ci']}," in console
    assert marked["first-epoch"] == reference_docs.first_epoch(console)


def test_the_readme_shows_each_screenshot_the_tool_takes() -> None:
    images = re.findall(r"\]\((docs/images/[\w.]+\.png)\)", README)
    runs = reference_screenshots.ReferenceRuns(*["x"] * 7)
    taken = {"dvc_plots.png", *(shot.file for shot in reference_screenshots.mlflow_shots(runs))}
    assert {Path(image).name for image in images} == taken
    assert all((REPO_ROOT / image).is_file() for image in images)
