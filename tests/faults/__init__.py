"""The fault suite of issue 8 ("Prove the spine"): `python -m tests.faults` (make faults)."""
