"""Launching Flower's processes: the single-host deployment, the server and client
hosts' halves, simulation, and what they share (processes, Flower's CLI, keys, TLS,
faults)."""
