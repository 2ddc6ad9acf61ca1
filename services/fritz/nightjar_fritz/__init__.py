"""The Fritz-like service: a SkyPortal-compatible subset of the API, backed by MongoDB.

Input: the calls `nightjar post` (or Kowalski) makes: candidates, photometry, thumbnails,
annotations. Output: SkyPortal's JSON envelopes, and a candidates page for operators.
Standard library HTTP server (`server`), request checks (`payloads`), storage (`store`).
"""
