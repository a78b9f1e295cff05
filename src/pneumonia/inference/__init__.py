"""Using a trained model: the one loader of model, card and operating point, prediction on
files, the served MLflow model and Grad-CAM."""
