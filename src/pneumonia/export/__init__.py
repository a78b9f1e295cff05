"""A trained model exported for other runtimes (ONNX, SavedModel) with its input spec, golden
arrays and a standalone reference preprocessing: `pneumonia export`, formats.export_model."""
