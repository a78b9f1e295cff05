"""DVC stage `validate`: check every param of params.yaml before any other stage runs.

It depends on the whole file, so any edit re-runs it, and `download` depends on its output, so
it runs first: a typo such as `evalute:` (or `dvc exp run -S +evalute.threshold=0.3`) fails here
with the key named, instead of changing no stage and exiting 0. Its output is the same for every
valid params.yaml, so a valid edit re-runs only the stages that use the changed params.
"""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.config import load_config
from pneumonia.contracts.files import write_json
from pneumonia.errors import run_stage


def main() -> None:
    config = load_config()
    write_json(config.paths.params_check, {"params": "params.yaml", "valid": True})
    print("validate: params.yaml OK")


if __name__ == "__main__":
    run_stage(main)
