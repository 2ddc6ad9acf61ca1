"""Avro on the wire: container framing written by publish (container.py), and writer schemas
checked before any record is read (guard.py: no field-less records, recursion or absurd
sizes; every count and length bounded by the bytes that remain).
"""
