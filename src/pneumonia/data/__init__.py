"""The data stages: download (fetch, lay out and check the images), split (patient-level) and
preprocess (the processed arrays)."""
