"""`mlx-rsg bench`: the measurements of each run directory (measure.py) and the Markdown table and
chart written from them (report.py)."""
