"""fedsqueeze.strategies: channels, the `Compressed` wrapper and its mods, and the methods.

Public API (what a Flower user's app imports)::

    from fedsqueeze.strategies import Compressed, compression_mod, TopKEF
    strategy = Compressed(FedAvgM(...), uplink=TopKEF(sparsity=0.99), downlink=TopKEF())
    app = ClientApp(mods=[compression_mod])          # the handler sees plain ArrayRecords
    strategy = Compressed(..., sinks=[TensorBoardSink("runs/x")])  # bytes to a tracker

    strategy, arrays = strategy_from_run_config(run_config)  # a registered method, any app
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)
    app = ClientApp(mods=[compression_mod, method_mod])  # its client side, around a handler
    hooks = training_hooks()                              # inside the handler: what the
                                                          # method asks of local training

Channels (`strategies/channel.py`, one module each in `strategies/channels/`): frozen
dataclasses registered with `@register_channel`, `encode(arrays, seed=, memory=)` ->
`Coded(records, delivered)` and `decode(content, shapes, memory=)`.

The method contract: a method is one module in `strategies/methods/`, found by discovery,
plus its keys in pyproject's `[tool.flwr.app.config]`, its tests, its line in the README's
`methods --brief` block and a run in each `compare` preset (both checked by tests)::

    @dataclasses.dataclass(frozen=True)
    class FedAvgMConfig(MethodConfig):      # the `fedavgm.*` keys; @register sets the prefix
        server_lr: float = 1.0

    @register("fedavgm")
    class FedAvgMMethod(Method):
        Config = FedAvgMConfig               # default: MethodConfig (no keys)
        plain = True                         # its messages carry the plain model
        def strategy(self, model, **options) -> Strategy: ...   # a Flower strategy
        Client = ClientSide                  # default: nothing beyond arrays in, arrays out
        model_transform = ""                 # a transform it needs ("fedpara")

    @paper_claim("FedAvgM", "...", setting="...", needs=("fedavgm",))  # optional: checked
    def _claim(runs, ours) -> Measured: ...  # by `compare` against the runs labelled fedavgm*

A config's `schedule(num_server_rounds)` (default None) is what the method does in which
round (FedSparsify's pruning, FedDST's readjustments); the method holds it as `schedule`.

A *plain* method is a Flower strategy over plain arrays (Flower's own, subclassed only to name
the method in its messages, `Tagged`, and to export its state); the run's channels carry its
model (`build.py`: `Compressed(strategy, uplink, downlink)`; dense fp32 both ways by default).
A *coded* method codes its own messages: its strategy is a `SqueezeStrategy` (a Flower FedAvg)
that overrides hooks:

    encode_down(server_round, node_id, arrays) -> RecordDict      train message content
    decode_up(server_round, node_id, content) -> Arrays            the client's model
    aggregate_decoded(server_round, replies) -> (ArrayRecord, MetricRecord)  default: FedAvg
    exchanges(server_round) -> tuple[str, ...]                     exchanges before "train"
    encode_exchange(name, server_round, node_id) -> RecordDict
    decode_exchange(name, server_round, node_id, content) -> Any   raise CodecError to reject
    combine_exchange(name, server_round, decoded)                  decoded = {client: value}
    encode_evaluate(server_round, node_id, arrays) -> RecordDict   default: dense fp32 model
    begin_round(server_round, arrays) / end_round(server_round)    per-round state
    round_metrics(server_round) -> dict                            keys of the round's row
    models_to_evaluate(server_round) -> {name: [state dicts]}      extra central evaluations
    export_state() -> ServerState / import_state(state)            plain arrays + JSON (resume)
    client_state_lost(client)                                      forget a client's mirror

Its Flower verbs run a whole round: `configure_train` samples (Flower's rule), runs the
round's earlier exchanges on the grid it is given, and returns the train messages;
`aggregate_train` rejects, with the reason in `failures`, error replies, replies from nodes it
did not ask, several replies of one node, replies to another round or exchange, weights that
are not positive counts, undecodable payloads, decoded models that are non-finite or exceed
`max_abs_value`, metric keys other than the round's majority; and aggregates the rest in
`client_key` order (node id by default; the app keys by partition id).

Client side (`ClientSide`, run by `method_mod` around the handler): for a train message,
`trains(exchange)` says whether the handler trains; if so `receive(exchange, content,
state)` -> the plain arrays it trains from (and sets `hooks`, the `TrainingHooks` of its
training), then `send(exchange, arrays, state)` -> the reply's records; if not,
`reply_without_training(exchange, content, state)` -> the reply's records. `metrics(exchange,
state)` -> extra reply metrics; for an evaluation, `evaluation(content, state)` -> {name:
arrays} ("arrays": the model to evaluate; others: the client's own). `state` is Flower's
`context.state` (persists across rounds in both engines; discarded when the handler raises).
Every metric key must be the same for every client of a round.

Shared pieces every method may use: `model_codec` (the whole model as one dense payload),
`tensors` (canonical order, flatten/unflatten, global top-k), `state` (per-node state,
versioned server mirrors, exported server state), `payload` (codec bytes in Flower records),
`replies` (the reply checks), `hooks` (training hooks), `settings` (run config), `training`
(local SGD and evaluation). A method never imports another method.
"""

from .build import build_strategy, strategy_from_run_config
from .channel import Channel, channel_names, get_channel, register_channel
from .channels.dense import Dense
from .channels.qsgd import QSGD
from .channels.residual import Residual
from .channels.sign_ef import SignEF
from .channels.ternary_ef import TernaryEF
from .channels.topk_ef import TopKEF
from .compressed import Compressed
from .hooks import TrainingHooks, training_hooks
from .mods import compression_mod, method_mod
from .registry import get_method, method_names, register
from .sinks import JsonlSink, RoundSink, TensorBoardSink, register_sink

__all__ = [
    "QSGD", "Channel", "Compressed", "Dense", "JsonlSink", "Residual", "RoundSink", "SignEF",
    "TensorBoardSink", "TernaryEF", "TopKEF", "TrainingHooks", "build_strategy",
    "channel_names", "compression_mod", "get_channel", "get_method", "method_mod",
    "method_names", "register", "register_channel", "register_sink", "strategy_from_run_config",
    "training_hooks",
]
