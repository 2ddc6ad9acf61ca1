"""`nightjar demo`: the whole pipeline on simulated and reference alerts, on the local
services, ending with a report and a gallery (main.py drives setup, report, gallery, where).
"""
