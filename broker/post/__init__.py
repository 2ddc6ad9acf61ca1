"""The second consumer: outbox jobs -> SkyPortal/Fritz.

outbox.py (filter matches waiting to be posted, claimed with leases), sender.py (claims a job
and makes its outstanding calls), skyportal.py (the HTTP client and request bodies),
photometry.py and thumbnails.py (what a candidate's photometry and cutouts look like on the
wire). Runs as `nightjar post`, or in a thread of `nightjar run`.
"""
