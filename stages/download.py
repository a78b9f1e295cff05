"""DVC stage `download`: fetch (Kaggle) or open (local folder / zip) the dataset, check every image,
write the manifest and the data-quality report."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.config import load_config
from pneumonia.contracts.files import write_json
from pneumonia.data.download import run_download
from pneumonia.errors import run_stage
from pneumonia.tracking import stage_run


def main() -> None:
    config = load_config()
    paths = config.paths
    with stage_run("download", config, {"download": config.params["download"]}) as run:
        result = run_download(config)
        paths.manifest.parent.mkdir(parents=True, exist_ok=True)
        result.manifest.to_csv(paths.manifest, index=False)
        write_json(paths.data_quality, result.quality)
        write_json(paths.stage_summary("download"), result.summary)
        run.log_metrics(result.summary)
        run.log_hashes("output", [paths.manifest])
        run.log_artifact(paths.manifest)
        run.log_artifact(paths.data_quality)
        run.log_dataset(result.manifest, paths.manifest, "manifest", "download")
        line = (
            f"download: {result.summary['images_usable']:.0f} usable images, "
            f"{result.summary['bad_files']:.0f} bad file(s) excluded (see {paths.data_quality})"
        )
        run.describe(f"{line}; source {config.download.source}")
    print(line)


if __name__ == "__main__":
    run_stage(main)
