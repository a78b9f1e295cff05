"""The evaluate stage: figures with confidence intervals, plots, Grad-CAM panels, and what it
records in MLflow and the registry."""
