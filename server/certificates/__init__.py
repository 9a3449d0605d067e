"""Erasure certificates over HTTP: the signed certificate of a request and its public, signed live status."""
