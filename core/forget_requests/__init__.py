"""Deletion requests, their images, training jobs and job events."""
