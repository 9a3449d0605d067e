"""Erasure certificates: salted commitments, signed status with expiry, revocation records, checks."""
