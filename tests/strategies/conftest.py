"""A method's client side driven as `method_mod` and fedsqueeze's handler drive it, one
message at a time: receive into a model, local training honouring the hooks, send."""

from __future__ import annotations

import pytest

from fedsqueeze.strategies.tensors import load_arrays, model_arrays
from fedsqueeze.strategies.training import local_training


class ClientRound:
    @staticmethod
    def receive(client, content, state, model, exchange="train"):
        load_arrays(model, client.receive(exchange, content, state))
        return model

    @staticmethod
    def train(client, model, data, seed):
        return local_training(model, data, client.settings, client.server_round, seed,
                              client.hooks)

    @staticmethod
    def send(client, model, state, exchange="train"):
        return client.send(exchange, model_arrays(model), state)


@pytest.fixture
def client_round():
    return ClientRound
