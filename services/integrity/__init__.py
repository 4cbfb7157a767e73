"""Tamper evidence: hash-chain verification, signed checkpoints, offline bundles."""
