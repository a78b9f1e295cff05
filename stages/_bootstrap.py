"""Make the stage scripts import this tree's `pneumonia` library, not an installed copy.

`dvc exp run --temp` and `--queue` run the stages in a copy of the repository under
`.dvc/tmp/exps/`. With the package installed in editable mode, a plain import would load the
workspace's `src/` instead of the copy's, so a queued experiment would run whatever code the
workspace holds when its turn comes, not the code it was queued with.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
