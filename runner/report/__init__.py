"""`runner report`: what a job did, as one self-contained HTML page.

`timeline.py` records a row of the job's counters per second while it runs (started by
`lifecycle.open_run`); `data.py` reads the checkpoint read-only into what the page shows;
`page.py` writes the HTML, charts drawn by the vendored uPlot. Import the part you need:
the runner imports only the timeline, and only `runner report` the rest.
"""
