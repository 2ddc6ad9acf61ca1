"""The Fritz-like service: a SkyPortal-compatible subset of the API, backed by MongoDB.

Input: the calls `nightjar post` (or Kowalski) makes: candidates, photometry, thumbnails,
annotations. Output: SkyPortal's JSON envelopes, and a candidates page for operators.
Standard library HTTP server (`server`), request checks (`payloads`), storage (`store`),
configuration (`config`); `python -m nightjar_fritz serve` runs it. It imports no broker code.
"""

# The API reports it (sysinfo, every envelope); pyproject.toml reads it for the package.
__version__ = "0.1.0"
