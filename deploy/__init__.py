"""Running the app: the `fedsqueeze` command and the engines.

- `cli.py`, `compare.py`, `tune.py`, `catalog.py`, `config_check.py`: the commands (and the
  run-config check every engine applies before a run starts).
- `inprocess.py`: the in-process engine (the real ServerApp round loop and ClientApp in one
  process; tests and `compare`).
- `launch/`: Flower's own processes: `deploy` on one host, `server` and `client` across hosts,
  `simulate` on Ray, and what they share.
- `wire/`: the wire byte layer (a metering relay per SuperNode, gRPC call attribution).
- `accelerated/`: the Flower layer `--flower stock` switches off.
"""
