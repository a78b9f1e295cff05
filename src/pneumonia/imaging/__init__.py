"""Decoding, checking and preprocessing one image: shared by the data stages, training and
inference, so every path preprocesses an image with the same code."""
