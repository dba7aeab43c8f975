"""The wire byte layer: a metering TCP relay per SuperNode, gRPC call attribution, and
the wire bytes in a run's results."""
