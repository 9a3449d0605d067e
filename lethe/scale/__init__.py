"""`lethe bench scale`: the run (`bench`), the registry rows it writes, the timed server process, the report."""
