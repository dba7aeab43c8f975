"""fedsqueeze.strategies: the method framework; the methods live in `strategies/methods/`.

The method contract: a server strategy plus a client side, built from run config.

A method is one module in `strategies/methods/`, found by discovery (no list to edit), plus its
keys in pyproject's `[tool.flwr.app.config]`, plus its tests::

    @dataclasses.dataclass(frozen=True)
    class TopKConfig(MethodConfig):          # the `topk-ef.*` keys; @register sets the prefix
        sparsity: float = 0.99
        def __post_init__(self): self.check({"sparsity": (lambda v: 0 <= v < 1, "in [0, 1)")})

    @register("topk-ef")
    class TopKEF(Method):
        Config = TopKConfig                  # default: MethodConfig (no keys)
        Strategy = UpdateStrategy            # default: SqueezeStrategy (dense model both ways)
        Client = TopKClient                  # default: ClientSide (dense model both ways)
        def coder(self, memory) -> TopKCoder: ...   # update methods only (`updates.py`)
        def model_codec(self) -> DenseModelCodec: ...   # default: fp32
        model_transform = ""                 # a transform it needs ("fedpara"); default: the
                                             # run config's `model-transform`

`Method.transform` (from `model_transform.py`) is the run's model transform or None; the
server and the ClientApp build the model with `build_run_model(settings, method.transform)`,
so a transform changes what every method trains without code in the method.

Server side (`SqueezeStrategy`, a subclass of Flower's FedAvg). The round loop calls, per
round t: `sample(t)`, `begin(t, arrays)`, then for each exchange of `exchanges(t)` and finally
"train": `configure_exchange(name, t, node_ids)` -> messages, then `aggregate_exchange(name,
t, replies)` (earlier exchanges) or `aggregate_train(t, replies)` (Flower's verb), then
`end(t)`. Rounds with `local-eval-every` also run `configure_evaluate` / `aggregate_evaluate`
(Flower's verbs) on the clients' local test splits. A method overrides only hooks:

    encode_down(t, node_id, arrays) -> RecordDict         train message content (no config:
                                                          the core attaches the round's config)
    decode_up(t, node_id, content) -> Arrays              the client's model, plain float32
    aggregate_decoded(t, replies) -> (ArrayRecord, MetricRecord)   default: Flower's FedAvg
    exchanges(t) -> tuple[str, ...]                       exchanges before "train" (default none)
    encode_exchange(name, t, node_id) -> RecordDict
    decode_exchange(name, t, node_id, content) -> Any     raise CodecError/ValueError to reject
    combine_exchange(name, t, decoded)                    decoded = {partition: value}: decide
    encode_evaluate(t, node_id, arrays) -> RecordDict     default: the dense fp32 global model
    begin_round(t, arrays) / end_round(t)                 per-round state (end: also on failure)
    round_metrics(t) -> dict                              method keys of the round's row
    models_to_evaluate(t) -> {name: [state dicts]}        extra centrally evaluated models
    export_state() -> ServerState / import_state(state)   plain arrays + JSON (resume)
    client_state_lost(partition_id)                       its context.state is gone (restarted
                                                          SuperNode, resumed run): resync it

Before aggregation the core rejects, per reply and with the reason in `failures`: error
replies, replies from nodes the exchange was not sent to, several replies of one node, replies
of another round/exchange, another node's partition id, undecodable payloads, decoded models
that are non-finite or exceed `max-abs-value`, `num-examples` other than the node's count at
discovery, metric keys other than the round's majority, non-finite exchange values.

Client side (`ClientSide`): the generic ClientApp sets `server_round`, builds the run's model
and calls, for a train message: `receive(content, state, model)` -> model, `train(model, data,
state, seed)` -> metrics, `send(model, state)` -> RecordDict, `metrics(model, state)` -> extra
reply metrics; for an earlier exchange: `exchange(name, content, state, model, data, seed)`
-> RecordDict; for a local evaluation: `evaluation_model(content, state, model)` -> model,
then `own_models(global_model, state, model)` -> {name: model} evaluated beside it.
The ClientApp passes what `receive` and `evaluation_model` return through `checked(model)`
(DownlinkRejected for a non-finite or absurd model); an exchange that decodes a model calls
it itself.
`state` is Flower's `context.state` (persists across rounds in both engines; discarded when a
hook raises). Replies get the metrics ("num-examples", ...) and the identity record from the
core. Every metric key must be the same for every client of a round.

Shared pieces every method may use: `model_codec` (the whole model as one payload: fp32,
fp16, bf16 or uniform b-bit), `updates` (update-uplink methods: error memory, "sent model +
update", the compressed downlink of the broadcast model's change), `tensors`
(canonical order, flatten/unflatten, global top-k), `state` (per-node state, versioned server
mirrors, exported server state), `payload` (codec bytes in Flower records), `settings` (run
config), `training` (local SGD and evaluation). A method never imports another method.
"""
