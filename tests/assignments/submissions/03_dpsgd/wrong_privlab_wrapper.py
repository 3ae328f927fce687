"""Issue 21: privlab.dpsgd does the work (was full marks)."""
# expect: {"q1_per_example": 0.0, "q2_clip": 0.0, "q3_noise": 0.0, "q4_training": 0.0, "q5_audit": 0.0}
from privlab import dpsgd


def per_example_grads(model, loss_fn, X, y):
    grads = dpsgd.per_sample_grads(model, loss_fn, X, y, method="loop")
    return torch.cat([g.reshape(X.shape[0], -1) for g in grads], 1)


def clip_rows(G, C):
    return G * dpsgd.clip_factors(G.norm(dim=1), max_grad_norm=C)[:, None]


def private_gradient(G, C, sigma, expected_batch_size, generator):
    total = clip_rows(G, C).sum(0)
    return (total + sigma * C * torch.randn(total.shape, generator=generator, dtype=total.dtype)) / expected_batch_size


def train_dpsgd(model, loss_fn, X, y, *, steps, sample_rate, C, sigma, lr, generator):
    opt = dpsgd.DPOptimizer(torch.optim.SGD(model.parameters(), lr=lr), noise_multiplier=sigma,
                            max_grad_norm=C, expected_batch_size=sample_rate * X.shape[0], method="loop")
    for _ in range(steps):
        mask = torch.rand(X.shape[0], generator=generator) < sample_rate
        opt.step(model, loss_fn, X[mask], y[mask])
    return model


def audit_release(release):
    return private_gradient is not None and clip_rows is not None
