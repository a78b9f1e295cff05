"""DVC stage `split`: patient-level, stratified train/val split; the official test split kept."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.config import load_config
from pneumonia.contracts.files import check_writable, read_csv, write_csv, write_json
from pneumonia.data.split import split_manifest, summarize
from pneumonia.errors import run_stage
from pneumonia.tracking import stage_run


def main() -> None:
    config = load_config()
    paths = config.paths
    with stage_run("split", config, {"split": config.params["split"]}) as run:
        check_writable([paths.split, paths.reports])  # a read-only folder fails in a second
        run.log_hashes("input", [paths.manifest])
        result = split_manifest(read_csv(paths.manifest, "download"), config.split)
        for name, frame in result.splits.items():
            write_csv(paths.split_csv(name), frame)
            run.log_dataset(frame, paths.split_csv(name), name, name)
        summary = summarize(result.report)
        write_json(paths.stage_summary("split"), summary)
        run.log_metrics(summary)
        run.log_json(result.report, "split_report.json")
        run.log_hashes("output", [paths.split_csv(name) for name in result.splits])
        run.log_artifact(paths.split, "split")
        line = "split: " + ", ".join(
            f"{name} {len(frame)}" for name, frame in result.splits.items()
        )
        run.describe(f"{line} images; val from the official train images by patient, test kept")
    print(line)


if __name__ == "__main__":
    run_stage(main)
