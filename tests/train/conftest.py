from tinyrun import shards  # noqa: F401  (the session fixture, for every test in this folder)
