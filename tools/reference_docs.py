"""Regenerate what the README shows of the reference run from one kept clone of it, so the console
excerpt, the figures and the screenshots cannot disagree:

    python benchmarks/quality.py --keep          # prints `kept: CLONE (log: CLONE/../repro.log)`
    python tools/reference_docs.py CLONE         # the README's excerpt and figures, the screenshots
    python tools/reference_docs.py CLONE --no-screenshots   # the README only (no browser needed)

The README's generated parts sit between markers, `<!-- reference:NAME -->` and
`<!-- /reference:NAME -->`; the prose around them is left as it is. `console` is the excerpt of
the clone's `dvc repro` log (quality.py writes it beside the clone, as `../repro.log`; --log for
another place), cut by the rules in console_excerpt. The figures (FIGURES) come from the clone's
reports/metrics.json and reports/model_card.md, the files the repository commits; `first-epoch`
from the log. tests/test_reference_docs.py checks that the committed README's figures equal
those of the committed reports, so replace reports/ and run this together.

The screenshots (tools/reference_screenshots.py: MLflow's UI on the project's store through
headless Chromium, and the clone's `dvc plots show`, or `dvc plots diff` of --plots-revisions)
go to docs/images/. They need Debian's `chromium` and Python's `playwright` (`pip install
playwright`; its own browser download is not needed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pneumonia.evaluation.model_card import METRIC_WORDS, SECTIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
README = Path("README.md")
TOOL = "python tools/reference_docs.py"

# The stages the excerpt leaves out (the data stages print a line or two each) and those it
# needs; every other stage that ran is shown, in the log's order.
LEFT_OUT_STAGES = ("validate", "download", "split")
NEEDED_STAGES = ("preprocess", "train", "evaluate")
PROJECT = "<project>"
ELISION = "..."
# The final fit's epochs shown whole at its end, after its first and an elision.
LAST_EPOCHS = 3

STAGE_RUNS = re.compile(r"^Running stage '(?P<name>[^']+)':$")
# What ends a stage's output in DVC's log: its lock-file update, the blank line, the next stage.
STAGE_END = re.compile(r"^(Updating lock file|Running stage '|Stage '|$)")
# pneumonia.progress's plain line every 30 s off a terminal: `..., 00:30 elapsed, ETA 00:20`.
PROGRESS = re.compile(r", \d+(?::\d\d){1,2} elapsed(?:, |$)")
# A trial's header (`trial 1/4: optimizer adam, ...`) and its closing line (`... in 01:25`).
TRIAL = re.compile(r"^trial (?P<number>\d+)/(?P<total>\d+): ")
TRIAL_END = re.compile(r"^trial \d+/\d+: .* in \d+(?::\d\d){1,2}$")
FINAL_FIT = re.compile(r"^final fit\b(?!: \d+ member\(s\) in )")
FINAL_FIT_END = re.compile(r"^final fit: \d+ member\(s\) in ")
EPOCH = re.compile(r"^(?P<indent>\s+)epoch \d+/\d+: loss ")
FIRST_EPOCH = re.compile(r"^\s+epoch 1/\d+: loss (?P<loss>[\d.]+), .*val_auc (?P<val_auc>[\d.]+)")

# `- ROC AUC 0.939 (95% CI 0.917-0.957)`: a figure of the model card's performance section.
CARD_FIGURE = re.compile(
    r"^- (?P<words>[A-Za-z ]+?) (?P<value>[\d.]+) \(\d+(?:\.\d+)?% CI "
    r"(?P<low>[\d.]+)-(?P<high>[\d.]+)\)$"
)
CARD_CONFUSION = re.compile(
    r"^- Confusion: (?P<true_positive>\d+) true positives, (?P<false_negative>\d+) false "
    r"negatives .*?, (?P<true_negative>\d+) true negatives, (?P<false_positive>\d+) false positives"
)
CARD_VAL = "On val, at the same threshold:"

# The README's inline figures: each template's fields are those of reference_figures.
FIGURES = {
    "quick-start": "test ROC AUC {test_roc_auc} and specificity {test_specificity}",
    "results": (
        "test ROC AUC {test_roc_auc} {test_roc_auc_ci}, and at its val-chosen threshold "
        "({threshold}) sensitivity {test_sensitivity} {test_sensitivity_ci} but specificity "
        "{test_specificity} {test_specificity_ci}; val ROC AUC {val_roc_auc}"
    ),
    "val": "Val ROC AUC is {val_roc_auc} and val specificity {val_specificity}",
    "confusion": "{true_negative}/{false_positive}/{false_negative}/{true_positive}",
}
MARKED = re.compile(
    r"<!-- reference:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /reference:(?P=name) -->", re.DOTALL
)


def stage_blocks(lines: Sequence[str]) -> dict[str, list[str]]:
    """Each stage that ran: its `Running stage` line, the command DVC echoes and the stage's own
    output, up to DVC's lock-file line (or a blank line, or the next stage)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        match = STAGE_RUNS.match(line)
        if match is not None:
            current = blocks.setdefault(match["name"], [])
            current.append(line)
        elif current is not None:
            if STAGE_END.match(line):
                current = None
            else:
                current.append(line)
    return blocks


def elide_trials(lines: Sequence[str]) -> list[str]:
    """The first and the last tuning trial whole, one `...` for every trial between them."""
    spans: list[list[int]] = []
    for index, line in enumerate(lines):
        match = TRIAL.match(line)
        if match is None:
            continue
        if not spans or spans[-1][2] != int(match["number"]):
            spans.append([index, index, int(match["number"])])
        spans[-1][1] = index
    if len(spans) <= 2:
        return list(lines)
    first, last = spans[1][0], spans[-2][1]
    return [*lines[:first], ELISION, *lines[last + 1 :]]


def elide_epochs(lines: Sequence[str]) -> list[str]:
    """In the final fit, each member's first epoch, an indented `...` and its last LAST_EPOCHS
    epochs; the lines around them (the fit's header, members, summary) whole."""
    result: list[str] = []
    inside = False
    run: list[str] = []

    def flush() -> None:
        if len(run) > LAST_EPOCHS + 1:
            indent = EPOCH.match(run[0])["indent"]  # type: ignore[index]  (matched when added)
            result.extend([run[0], indent + ELISION, *run[-LAST_EPOCHS:]])
        else:
            result.extend(run)
        run.clear()

    for line in lines:
        if inside and EPOCH.match(line):
            run.append(line)
            continue
        flush()
        if FINAL_FIT_END.match(line):
            inside = False
        elif FINAL_FIT.match(line):
            inside = True
        result.append(line)
    flush()
    return result


def console_excerpt(log: str, project: str) -> str:
    """The README's excerpt of a `dvc repro` log: every stage but LEFT_OUT_STAGES (and the
    NEEDED_STAGES there), without DVC's lock-file lines and hints and without the progress lines
    every 30 s; in train the first and last trial and the final fit's first and last epochs
    (elide_trials, elide_epochs); `project` (the clone's path) written as `<project>`."""
    lines = [
        line.replace(project, PROJECT)
        for line in log.splitlines()
        if not PROGRESS.search(line.rstrip())
    ]
    blocks = stage_blocks([line.rstrip() for line in lines])
    missing = [name for name in NEEDED_STAGES if name not in blocks]
    if missing:
        raise ValueError(
            f"the log has no `Running stage` line for {', '.join(missing)}: pass the log of a "
            "`dvc repro` that ran every stage (benchmarks/quality.py --keep's repro.log)"
        )
    excerpt: list[str] = []
    for name, block in blocks.items():
        if name in LEFT_OUT_STAGES:
            continue
        if name == "train":
            block = elide_epochs(elide_trials(block))
        excerpt += [*block, ""]
    return "\n".join(excerpt[:-1])


def first_epoch(text: str) -> str:
    """`loss 0.2693, val AUC 0.9878`: the first trial's first epoch, from a log or the excerpt."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("trial 1/")), None)
    if start is not None:
        for line in lines[start:]:
            match = FIRST_EPOCH.match(line)
            if match is not None:
                return f"loss {match['loss']}, val AUC {match['val_auc']}"
    raise ValueError("the log has no first epoch of trial 1 (`  epoch 1/N: loss ...`)")


def card_figures(card: str) -> dict[str, str]:
    """The model card's performance section as fields: `test_roc_auc`, `test_roc_auc_ci`
    ('[low, high]'), ... and `val_...` for each figure with its interval, and the test confusion
    counts (`true_positive`, ...)."""
    lines = card.splitlines()
    if SECTIONS[2] not in lines:
        raise ValueError(f"the model card has no `{SECTIONS[2]}` section: is it evaluate's card?")
    words = {text: metric for metric, text in METRIC_WORDS.items()}
    fields: dict[str, str] = {}
    split = "test"
    for line in lines[lines.index(SECTIONS[2]) + 1 :]:
        if line.startswith("## "):
            break
        if line == CARD_VAL:
            split = "val"
        match = CARD_FIGURE.match(line)
        if match is not None and match["words"] in words:
            key = f"{split}_{words[match['words']]}"
            fields[key] = match["value"]
            fields[f"{key}_ci"] = f"[{match['low']}, {match['high']}]"
        confusion = CARD_CONFUSION.match(line)
        if confusion is not None:
            fields.update(confusion.groupdict())
    return fields


def reference_figures(metrics: Mapping[str, float], card: str) -> dict[str, str]:
    """The fields of FIGURES: the headline figures at 3 decimals from metrics.json, their
    intervals, val's other figures and the confusion counts from the model card (checked to be
    of the same run: the card's test figures are metrics.json's)."""
    fields = card_figures(card)
    headline = {f"test_{name}": metrics[name] for name in METRIC_WORDS}
    headline.update(threshold=metrics["threshold"], val_roc_auc=metrics["val_roc_auc"])
    for key, value in headline.items():
        if key.startswith("test_") and key in fields and fields[key] != f"{value:.3f}":
            raise ValueError(
                f"the model card's {key} {fields[key]} is not metrics.json's {value:.3f}: the "
                "two files are of different runs"
            )
        fields[key] = f"{value:.3f}"
    return fields


def render_figures(fields: Mapping[str, str]) -> dict[str, str]:
    """FIGURES filled in; a field the card lacks names the template."""
    fragments = {}
    for name, template in FIGURES.items():
        try:
            fragments[name] = template.format_map(fields)
        except KeyError as error:
            raise ValueError(
                f"README fragment {name!r} needs {error.args[0]!r}, which neither metrics.json "
                "nor the model card's performance section gives"
            ) from None
    return fragments


def fragments_of(text: str) -> dict[str, str]:
    """The README's marked fragments by name (the text between the markers)."""
    return {match["name"]: match["body"] for match in MARKED.finditer(text)}


def replace_fragments(text: str, fragments: Mapping[str, str]) -> str:
    """`text` with each marked fragment's body replaced by fragments[name]; every fragment
    must be marked in the text, and every marker must be one of the fragments."""
    marked = fragments_of(text)
    missing = sorted(set(fragments) - set(marked))
    unknown = sorted(set(marked) - set(fragments))
    if missing or unknown:
        raise ValueError(
            f"{README}: markers missing for {missing or 'none'}, unknown markers "
            f"{unknown or 'none'}; each generated part sits between <!-- reference:NAME --> and "
            "<!-- /reference:NAME -->"
        )
    return MARKED.sub(
        lambda match: (
            f"<!-- reference:{match['name']} -->{fragments[match['name']]}"
            f"<!-- /reference:{match['name']} -->"
        ),
        text,
    )


def console_block(excerpt: str) -> str:
    """The console fragment as the README holds it: a text code block on lines of its own."""
    return f"\n```text\n{excerpt}\n```\n"


def readme_fragments(clone: Path, log: Path) -> dict[str, str]:
    """Every fragment of the README from a kept clone and its `dvc repro` log."""
    for path in (log, clone / "reports" / "metrics.json", clone / "reports" / "model_card.md"):
        if not path.is_file():
            raise ValueError(
                f"{path} is missing: pass the clone that `python benchmarks/quality.py --keep` "
                "kept (and --log when its repro.log is not beside it)"
            )
    log_text = log.read_text(encoding="utf-8", errors="replace")
    metrics = json.loads((clone / "reports" / "metrics.json").read_text(encoding="utf-8"))
    card = (clone / "reports" / "model_card.md").read_text(encoding="utf-8")
    fragments = render_figures(reference_figures(metrics, card))
    fragments["console"] = console_block(console_excerpt(log_text, str(clone)))
    fragments["first-epoch"] = first_epoch(log_text)
    return fragments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clone", type=Path, help="the clone benchmarks/quality.py --keep kept")
    parser.add_argument("--log", type=Path, help="its dvc repro log (default: CLONE/../repro.log)")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / README, help="README to rewrite")
    parser.add_argument(
        "--screenshots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="retake docs/images/ (default; needs chromium and playwright)",
    )
    parser.add_argument(
        "--plots-revisions",
        nargs="+",
        metavar="REV",
        help="screenshot `dvc plots diff REV...` in the clone instead of `dvc plots show`",
    )
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "docs" / "images")
    parser.add_argument("--store", default=f"sqlite:///{REPO_ROOT / 'mlruns' / 'mlflow.db'}")
    parser.add_argument("--port", type=int, default=5055, help="for the mlflow ui it starts")
    arguments = parser.parse_args(argv)
    clone = arguments.clone.resolve()
    log = (arguments.log or clone.parent / "repro.log").resolve()
    try:
        fragments = readme_fragments(clone, log)
        text = arguments.readme.read_text(encoding="utf-8")
        arguments.readme.write_text(replace_fragments(text, fragments), encoding="utf-8")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{arguments.readme}: {len(fragments)} fragments rewritten from {clone} and {log}")
    if arguments.screenshots:
        import reference_screenshots  # a sibling module: tools/ is on sys.path as the script's

        return reference_screenshots.take_all(
            clone,
            arguments.images,
            store=arguments.store,
            port=arguments.port,
            plots_revisions=arguments.plots_revisions,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
