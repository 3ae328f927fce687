"""A red-team read (session 13): one Poisson sample drawn before the loop and reused at every step (the accountant's per-step amplification does not hold; full marks while the tests ran one step)."""
# expect: {"q4_training": 1.75}

def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    params = [p for p in model.parameters() if p.requires_grad]
    mask = torch.rand(X.shape[0], generator=generator) < sample_rate
    for _ in range(steps):
        Xb, yb = X[mask], y[mask]
        if mask.any():
            G = per_example_grads(model, loss_fn, Xb, yb)
        else:
            G = torch.zeros(0, sum(p.numel() for p in params), dtype=X.dtype)
        g = private_gradient(G, C, sigma, sample_rate * X.shape[0], generator)
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= lr * g[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    return model
