"""What one stage hands another, each defined once and imported by its writer and its readers:
class labels and the call rule, artifact paths, the processed arrays, the model card, the
operating point and the registry's version tags."""
