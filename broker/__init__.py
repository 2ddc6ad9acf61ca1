"""Nightjar: a streaming alert broker for ZTF and Rubin/LSST alerts."""

__version__ = "0.1.0"
