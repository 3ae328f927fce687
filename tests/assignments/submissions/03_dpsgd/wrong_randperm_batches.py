"""Issue 21: fixed-size batches from randperm instead of Poisson sampling (was 2/2)."""
# expect: {"q4_training": 1.75}


def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    params = [p for p in model.parameters() if p.requires_grad]
    batch = max(1, round(sample_rate * X.shape[0]))
    for _ in range(steps):
        idx = torch.randperm(X.shape[0], generator=generator)[:batch]
        G = per_example_grads(model, loss_fn, X[idx], y[idx])
        g = private_gradient(G, C, sigma, sample_rate * X.shape[0], generator)
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= lr * g[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    return model
