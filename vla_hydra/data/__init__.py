"""Datasets, buffers and datamodules."""
