"""DVC stage `preprocess`: decode, grayscale, resize and (optionally) CLAHE every split into uint8
arrays, plus a sample grid per split."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.config import SPLITS, load_config
from pneumonia.contracts.files import check_writable, read_csv, write_json
from pneumonia.data.preprocess import run_preprocess, write_sample_grids
from pneumonia.errors import run_stage
from pneumonia.tracking import stage_run


def main() -> None:
    config = load_config()
    paths = config.paths
    with stage_run("preprocess", config, {"preprocess": config.params["preprocess"]}) as run:
        # A read-only or unwritable output folder fails now, not after the images are done.
        check_writable([paths.processed, paths.samples, paths.reports])
        split_files = [paths.split_csv(name) for name in SPLITS]
        run.log_hashes("input", split_files)
        frames = {name: read_csv(paths.split_csv(name), "split") for name in SPLITS}
        summary = run_preprocess(frames, paths.images, paths.processed, config.preprocess)
        write_sample_grids(paths, SPLITS, config.preprocess.sample_grid)
        write_json(paths.stage_summary("preprocess"), summary)
        run.log_metrics(summary)
        run.log_hashes("output", [paths.processed])
        run.log_artifact(paths.samples, "samples")
        run.log_artifact(paths.processed_meta)
        line = (
            f"preprocess: {summary['images_per_second']:.0f} images/s -> {paths.processed} "
            f"(train {summary['images_train']}, val {summary['images_val']}, test "
            f"{summary['images_test']} images)"
        )
        run.describe(line)
    print(line)


if __name__ == "__main__":
    run_stage(main)
