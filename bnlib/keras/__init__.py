"""Keras (TensorFlow) side of bnlib: placeholder, filled by the Keras issue."""
