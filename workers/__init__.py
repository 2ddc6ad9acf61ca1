"""Nightjar workers: Dask-side scoring of alert batches (cutouts -> features -> ONNX models).

Pure computation: no Kafka, MongoDB or HTTP; models are read from the local cache once per
worker process (`workers.plugin`).
"""
