"""What the tests share that is not a fixture, one module per concern: `paths` (the repository
and the shared dataset), `params` (the project's params.yaml plus speed overrides),
`mlflow_isolation` (each test's own MLflow store), `images` (small real image files and
Kaggle-layout folders), `project` (the real tools on a copy of the repository, a tiny project
to tune) and `services` (PostgreSQL, `mlflow server`, `mlflow models serve`).

Test files import from here (`from helpers import ...`); conftest.py holds only fixtures.
"""

from __future__ import annotations

from helpers.images import (
    PATIENT_FILES,
    REFUSED_FORMATS,
    TINY_PREPROCESS,
    TINY_SIDE,
    add_archive_quirks,
    blank_sixteen_bit_png,
    blob_pixels,
    build_kaggle_tree,
    chest_like_pixels,
    image_bytes,
    preprocess_config,
    sample_shared_images,
    truncated_jpeg_bytes,
    write_image,
)
from helpers.mlflow_isolation import (
    MLFLOW_ENVIRONMENT,
    MLFLOW_GLOBALS,
    mlflow_store,
)
from helpers.params import (
    PROJECT_PARAMS,
    SPEED_OVERRIDES,
    apply_changes,
    fixture_params,
    fixture_train_config,
    speed_overrides,
    unknown_keys,
    write_params,
)
from helpers.paths import (
    PROJECT_ROOT,
    SHARED_DATASET,
)
from helpers.project import (
    TINY_CNN,
    TINY_PROJECT_CHANGES,
    commit_baseline,
    copy_repository,
    pipeline_project,
    run_cli,
    run_command,
    split_index,
    tiny_project_arrays,
    tool_environment,
    write_tiny_project,
)
from helpers.services import (
    DEBIAN_BINARIES,
    SERVER_USER,
    MlflowServer,
    PostgresCluster,
    PostgresUnavailable,
    find_binaries,
    free_port,
    served_model,
)

__all__ = [
    "DEBIAN_BINARIES",
    "MLFLOW_ENVIRONMENT",
    "MLFLOW_GLOBALS",
    "PATIENT_FILES",
    "PROJECT_PARAMS",
    "PROJECT_ROOT",
    "REFUSED_FORMATS",
    "SERVER_USER",
    "SHARED_DATASET",
    "SPEED_OVERRIDES",
    "TINY_CNN",
    "TINY_PREPROCESS",
    "TINY_PROJECT_CHANGES",
    "TINY_SIDE",
    "MlflowServer",
    "PostgresCluster",
    "PostgresUnavailable",
    "add_archive_quirks",
    "apply_changes",
    "blank_sixteen_bit_png",
    "blob_pixels",
    "build_kaggle_tree",
    "chest_like_pixels",
    "commit_baseline",
    "copy_repository",
    "find_binaries",
    "fixture_params",
    "fixture_train_config",
    "free_port",
    "image_bytes",
    "mlflow_store",
    "pipeline_project",
    "preprocess_config",
    "run_cli",
    "run_command",
    "sample_shared_images",
    "served_model",
    "speed_overrides",
    "split_index",
    "tiny_project_arrays",
    "tool_environment",
    "truncated_jpeg_bytes",
    "unknown_keys",
    "write_image",
    "write_params",
    "write_tiny_project",
]
