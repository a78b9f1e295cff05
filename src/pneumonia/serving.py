"""Where the served model's class lived before the package was split into subpackages.

A served model registered then runs `from pneumonia.serving import PneumoniaServingModel` when
MLflow loads it; when `pneumonia` is already imported (as in `pneumonia predict --model
models:/pneumonia-classifier@champion`), that import resolves against this package, not the
model's own copy, so this name keeps those registry versions loadable.
"""

from pneumonia.inference.serving import PneumoniaServingModel

__all__ = ["PneumoniaServingModel"]
