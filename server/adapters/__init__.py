"""Trained modules: their versions, lineage, checksums and states; activating and deactivating them."""
