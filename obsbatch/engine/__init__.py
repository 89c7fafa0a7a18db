"""The transfer engine, both directions: the dispatch loop (parent), the worker process pool and what runs
in each worker (upload, download), the stop (shutdown), the pace (concurrency, ratelimit).
"""
