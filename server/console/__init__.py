"""The operator console at /console: one page and its static files; the data comes from /v1 with the tab's key."""
