"""A red-team read (session 13): a step skipped when the Poisson sample is empty (whether a step happened reveals an empty sample; full marks while no test sample was empty)."""
# expect: {"q4_training": 2.5}

def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(steps):
        mask = torch.rand(X.shape[0], generator=generator) < sample_rate
        if not mask.any():
            continue
        G = per_example_grads(model, loss_fn, X[mask], y[mask])
        g = private_gradient(G, C, sigma, sample_rate * X.shape[0], generator)
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= lr * g[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    return model
