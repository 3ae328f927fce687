"""Issue 21: Poisson batches, but the sum divided by the realised |S| instead of qN (was 2/2; since session 13 also the multi-step noise test, with empty samples)."""
# expect: {"q4_training": 1.25}


def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(steps):
        mask = torch.rand(X.shape[0], generator=generator) < sample_rate
        if not mask.any():
            continue
        G = per_example_grads(model, loss_fn, X[mask], y[mask])
        g = private_gradient(G, C, sigma, int(mask.sum()), generator)
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= lr * g[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    return model
