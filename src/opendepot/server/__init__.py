"""`opendepot serve` and its parts, one module per role: the supervisor process (`supervisor.py`), the API
worker's composition root (`worker.py`), the background services' composition root (`background.py`), the
settings (`config.py`). `serve.py` prepares the store and the data dir, then starts the supervisor."""
