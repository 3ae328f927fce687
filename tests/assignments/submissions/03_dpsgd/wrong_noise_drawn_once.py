"""A red-team read (session 13): one noise vector drawn before the loop and added at every step (differences of updates carry no noise; full marks while the tests ran one step)."""
# expect: {"q4_training": 2.5}

def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    noise = torch.randn(dim, generator=generator, dtype=X.dtype) * sigma * C / (sample_rate * X.shape[0])
    for _ in range(steps):
        mask = torch.rand(X.shape[0], generator=generator) < sample_rate
        G = per_example_grads(model, loss_fn, X[mask], y[mask]) if mask.any() else torch.zeros(0, dim, dtype=X.dtype)
        g = private_gradient(G, C, 0.0, sample_rate * X.shape[0], generator) + noise
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= lr * g[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    return model
