"""One module per command: backup, restore, verify, verify_manifest; runner ends restore and verify.
"""
