"""Deploying at a new site, the steps a user and the pipeline take on top of pneumonia.site's
statistics and records: `pneumonia site check/calibrate/list` (workflow, and publishing for the
MLflow run and the site's served version) and the DVC `site` stage, which treats the official
test split as a new site (stage, outputs). Above inference and evaluation: nothing below imports
it."""
