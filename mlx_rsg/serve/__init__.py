"""`mlx-rsg serve`: trained runs behind a local HTTP API and a page to try them.

    config.py    every option (the CLI's are made from it)
    runs.py      the run directories served: loaded once at start, described for /v1/models
    batcher.py   micro-batching: requests for one run and task in a short window, one forward
    scoring.py   a batch of requests scored, each answered in the official submission's spelling
    app.py       the HTTP routes (FastAPI), one-line 4xx errors, the body limit
    examples.py  an example record per task for the page (hand-written, or the data's first val)
    page.html    the page at /: no external assets
    server.py    uvicorn on a thread; the model only ever runs on the main thread
    process.py   a server in a child process, for scripts and tests
"""
