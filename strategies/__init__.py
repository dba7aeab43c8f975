"""fedsqueeze.strategies: the method framework, and the methods in `strategies/methods/`.

The contract (signatures, hooks, what the core does) is documented in `base.py`; shared
pieces every method may use: `model_codec` (the dense model payload), `tensors` (canonical
order, flatten/unflatten, global top-k), `state` (per-node state, versioned server mirrors,
exported server state), `payload` (codec bytes in Flower records), `settings` (run config),
`training` (local SGD and evaluation).
"""
