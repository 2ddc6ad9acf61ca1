"""Model tooling: the registry (config/models.yaml), fetching, conversion to ONNX, manifests.

`registry` and `manifest` are light (pydantic, json) and used by the workers; `fetch` and
`convert` run only from `nightjar models fetch` and import TensorFlow lazily.
"""
