"""The implicit hypergradient against exact bi-level gradients, and the inverse-HVP solvers."""

import pytest
import torch

from optimizer.hypergradient import hvp_from_gradients, implicit_hypergradient, inverse_hvp, mixed_grad_from_gradients
from optimizer.psi import OptimizerError


def _split(flat: torch.Tensor) -> list[torch.Tensor]:
    """A 7-vector as a list of a (3,) and a (2, 2) tensor, like a model's parameters."""
    return [flat[:3], flat[3:].reshape(2, 2)]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture
def spd_problem():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=g, dtype=torch.float64)
    matrix = a @ a.T + 0.5 * torch.eye(7, dtype=torch.float64)
    vector = torch.randn(7, generator=g, dtype=torch.float64)
    return matrix, vector


def test_cg_and_neumann_converge_to_the_exact_inverse_hvp(spd_problem):
    matrix, vector = spd_problem
    damping = 0.3
    exact = torch.linalg.solve(matrix + damping * torch.eye(7, dtype=torch.float64), vector)

    def hvp(v):
        return _split(matrix @ _flat(v))

    cg = inverse_hvp(hvp, _split(vector), method="cg", steps=7, damping=damping, tolerance=0.0)
    assert [t.shape for t in cg] == [(3,), (2, 2)]
    torch.testing.assert_close(_flat(cg), exact, rtol=1e-9, atol=1e-9)

    scale = 1.0 / (torch.linalg.eigvalsh(matrix).max().item() + damping)
    errors = [
        (_flat(inverse_hvp(hvp, _split(vector), method="neumann", steps=steps, damping=damping, scale=scale)) - exact).norm()
        for steps in (5, 50, 2000)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8 * exact.norm()

    identity = inverse_hvp(hvp, _split(vector), method="identity")
    torch.testing.assert_close(_flat(identity), vector)


def test_cg_keeps_its_iterate_on_negative_curvature():
    # H = -I: the first direction already has negative curvature, so CG must not step (a step
    # would flip the sign of the hypergradient); it returns the starting point 0.
    vector = [torch.tensor([1.0, 2.0])]
    u = inverse_hvp(lambda v: [-v[0]], vector, method="cg", steps=5)
    assert torch.equal(u[0], torch.zeros(2))


def test_inverse_hvp_rejects_bad_settings():
    with pytest.raises(OptimizerError, match="unknown method"):
        inverse_hvp(lambda v: v, [torch.ones(2)], method="lissa")
    with pytest.raises(OptimizerError, match="scale > 0"):
        inverse_hvp(lambda v: v, [torch.ones(2)], method="neumann", scale=0.0)


class RidgeProblem:
    """Inner: theta*(psi) = argmin ||X(psi) theta - y||^2 + lam |theta|^2 with training inputs
    X(psi) = X0 * exp(a) + b, psi = (a, b); outer: L_val = mean (X_val theta* - y_val)^2."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        kw = dict(generator=g, dtype=torch.float64)
        self.x0, self.y = torch.randn(12, 4, **kw), torch.randn(12, **kw)
        self.x_val, self.y_val = torch.randn(9, 4, **kw), torch.randn(9, **kw)
        self.lam = 0.3
        self.log_scale = (0.2 * torch.randn(4, **kw)).requires_grad_()
        self.shift = (0.2 * torch.randn(4, **kw)).requires_grad_()

    @property
    def psi(self) -> list[torch.Tensor]:
        return [self.log_scale, self.shift]

    def inputs(self) -> torch.Tensor:
        return self.x0 * self.log_scale.exp() + self.shift

    def theta_star(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(x.T @ x + self.lam * torch.eye(4, dtype=x.dtype), x.T @ self.y)

    def train_loss(self, theta: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        t = torch.cat(theta)
        return ((x @ t - self.y) ** 2).sum() + self.lam * (t**2).sum()

    def val_loss(self, theta: list[torch.Tensor]) -> torch.Tensor:
        return ((self.x_val @ torch.cat(theta) - self.y_val) ** 2).mean()

    def exact_gradient(self, direct_weight: float = 0.0) -> list[torch.Tensor]:
        theta = self.theta_star(self.inputs())
        loss = self.val_loss([theta]) + direct_weight * self.direct_loss()
        return list(torch.autograd.grad(loss, self.psi))

    def direct_loss(self) -> torch.Tensor:
        return (self.log_scale**2).sum() + (self.shift**3).sum()

    def implicit_gradient(self, direct_weight: float = 0.0, **inverse) -> list[torch.Tensor]:
        for p in self.psi:
            p.grad = None
        x = self.inputs()
        star = self.theta_star(x.detach())
        # theta as two parameter tensors, to exercise the list handling.
        theta = [star[:2].clone().requires_grad_(), star[2:].clone().requires_grad_()]
        x_leaf = x.detach().requires_grad_()
        grads = torch.autograd.grad(self.train_loss(theta, x_leaf), theta, create_graph=True)
        val_grad = torch.autograd.grad(self.val_loss(theta), theta)
        implicit_hypergradient(
            val_grad,
            hvp_from_gradients(grads, theta),
            mixed_grad_from_gradients(grads, x_leaf),
            x,
            direct_loss=direct_weight * self.direct_loss() if direct_weight else None,
            **inverse,
        )
        return [p.grad.clone() for p in self.psi]


def test_implicit_hypergradient_equals_the_exact_bilevel_gradient_on_ridge_regression():
    problem = RidgeProblem()
    exact = problem.exact_gradient()
    cg = problem.implicit_gradient(method="cg", steps=4, tolerance=0.0)
    for e, c in zip(exact, cg):
        torch.testing.assert_close(c, e, rtol=1e-8, atol=1e-10)

    # Neumann with enough terms gets there too; the identity approximation does not.
    x = problem.inputs().detach()
    top = torch.linalg.eigvalsh(2 * (x.T @ x + problem.lam * torch.eye(4, dtype=x.dtype))).max().item()
    neumann = problem.implicit_gradient(method="neumann", steps=3000, scale=1.0 / top)
    for e, n in zip(exact, neumann):
        torch.testing.assert_close(n, e, rtol=1e-5, atol=1e-7)
    identity = problem.implicit_gradient(method="identity")
    assert not torch.allclose(torch.cat(identity), torch.cat(exact), rtol=0.1)


def test_direct_term_is_added_when_the_validation_loss_depends_on_psi():
    problem = RidgeProblem()
    exact = problem.exact_gradient(direct_weight=0.7)
    implicit = problem.implicit_gradient(direct_weight=0.7, method="cg", steps=4, tolerance=0.0)
    for e, i in zip(exact, implicit):
        torch.testing.assert_close(i, e, rtol=1e-8, atol=1e-10)
