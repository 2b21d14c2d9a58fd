"""The report: reads result and training records, never runs anything. build (discover runs, tables,
CSV/JSON), stats (intervals and paired tests), seeds, flips, plots, html, markdown, console."""
