"""Model tooling behind `nightjar models`: fetching published files and converting them to ONNX.

What a model is (the registry of config/models.yaml and the installed-model manifest) lives
in `workers.models`; this package imports TensorFlow lazily and only the CLI reaches it.
"""
