"""digits-fedavgm: a Flower app (own model, data and training; Flower's FedAvgM) whose
traffic fedsqueeze compresses."""
