"""Issue 21: plain minibatch SGD on the mean loss, no clipping and no noise (was 2/2)."""
# expect: {"q4_training": 1.0}


def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        mask = torch.rand(X.shape[0], generator=generator) < sample_rate
        if not mask.any():
            continue
        opt.zero_grad()
        loss_fn(model(X[mask]), y[mask]).mean().backward()
        opt.step()
    return model
