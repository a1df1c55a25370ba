"""`python -m pipeline.demo`: the whole pipeline end to end on generated faces (see `__main__`)."""
