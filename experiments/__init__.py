"""compare.py's grid machinery (docs/design.md, Layout): grid (planning), executors (running the
runs: a local process pool or Ray), rundata (reading run directories), stats, report."""
