"""Implicit-function-theorem hypergradients for the bi-level problem

    min_psi L_val(theta*(psi)),   theta*(psi) = argmin_theta L_train(theta, x(psi)),

where x(psi) are the images rendered from psi. At a (local) optimum of the inner problem,

    dL_val/dpsi = - d/dpsi [ u . dL_train(theta, x(psi))/dtheta ],   u = H_train^-1 dL_val/dtheta,

(u held constant in the derivative), which is Neural-Sim's outer gradient. Everything here is
a flat function over lists of tensors (one per parameter tensor) that takes the networks as
callbacks, so it knows nothing about detectors or renderers.

BatchNorm: these functions never run a network, so they never choose a BatchNorm mode; the
callbacks and gradients handed in carry the mode they were computed in (``detector.losses``
takes an explicit ``BatchNormMode``). Use the same mode for ``hvp`` and ``mixed_grad``: they
are two derivatives of one training loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from optimizer.psi import OptimizerError

TensorList = list[Tensor]
HVP = Callable[[TensorList], TensorList]
"""v -> H v, with v and H v shaped like the parameter list."""
MixedGrad = Callable[[TensorList], TensorList]
"""u -> d/dx [u . dL_train/dtheta], one tensor per input x."""
InverseMethod = Literal["identity", "neumann", "cg"]


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two parameter-shaped tensor lists (a 0-d tensor)."""
    if len(a) != len(b):
        raise OptimizerError(f"hypergradient.dot: {len(a)} tensors against {len(b)}")
    return sum(((x * y).sum() for x, y in zip(a, b)), torch.zeros((), device=a[0].device, dtype=a[0].dtype))


def _grad_or_zeros(outputs: TensorList, grad_outputs: TensorList, inputs: Sequence[Tensor]) -> TensorList:
    """Vector-Jacobian product of ``outputs`` w.r.t. ``inputs``, skipping outputs without a graph
    (their contribution is zero) and giving zeros to inputs they do not reach."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    result = torch.autograd.grad(
        [o for o, _ in pairs], list(inputs), grad_outputs=[g for _, g in pairs], retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(x) if r is None else r for r, x in zip(result, inputs)]


def hvp_from_gradients(grads: Sequence[Tensor], params: Sequence[Tensor]) -> HVP:
    """Hessian-vector products of a loss from its gradient ``grads`` w.r.t. ``params``, taken
    once with ``create_graph=True`` (e.g. ``detector.losses.parameter_gradient(...,
    create_graph=True)``). Each call is one double backward through the retained graph, with no
    new forward pass, so it suits the many calls of CG or Neumann."""
    grads = list(grads)
    return lambda v: _grad_or_zeros(grads, list(v), params)


def mixed_grad_from_gradients(grads: Sequence[Tensor], inputs: Tensor | Sequence[Tensor]) -> MixedGrad:
    """``u -> d/dx [u . grads]`` for the inputs ``x`` the loss was computed from (typically the
    rendered images, detached from the renderer and marked ``requires_grad``); ``grads`` as for
    :func:`hvp_from_gradients`, so one gradient graph serves both callbacks."""
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    grads = list(grads)

    def mixed_grad(u: TensorList) -> TensorList:
        return _grad_or_zeros(grads, list(u), inputs)

    return mixed_grad


def inverse_hvp(
    hvp: HVP,
    vector: Sequence[Tensor],
    *,
    method: InverseMethod = "neumann",
    steps: int = 10,
    damping: float = 0.0,
    scale: float = 1.0,
    tolerance: float = 1e-6,
) -> TensorList:
    """Approximately solve ``(H + damping I) u = vector``. Not differentiable (call it on
    detached vectors).

    - ``identity``: ``u = vector`` (H taken as I; ``steps``, ``damping``, ``scale`` unused).
    - ``neumann``: ``u = scale * sum_{j=0}^{steps} (I - scale (H + damping))^j vector``; converges
      when every eigenvalue of ``scale (H + damping)`` lies in (0, 2).
    - ``cg``: conjugate gradient from 0 for at most ``steps`` iterations, stopping early when the
      residual is below ``tolerance`` times ``|vector|``, or (for a Hessian that is not positive
      definite, as a detector's usually is not) on the first direction of non-positive curvature,
      keeping the iterate reached so far.
    """
    if steps < 0 or damping < 0 or scale <= 0:
        raise OptimizerError(f"inverse_hvp: need steps >= 0, damping >= 0, scale > 0; got {steps}, {damping}, {scale}")
    vector = [v.detach() for v in vector]
    if method == "identity":
        return [v.clone() for v in vector]

    def damped(v: TensorList) -> TensorList:
        return [h + damping * x for h, x in zip(hvp(v), v)]

    if method == "neumann":
        term, total = vector, [v.clone() for v in vector]
        for _ in range(steps):
            term = [t - scale * h for t, h in zip(term, damped(term))]
            total = [s + t for s, t in zip(total, term)]
        return [scale * s for s in total]
    if method == "cg":
        if steps < 1:
            raise OptimizerError("inverse_hvp: conjugate gradient needs steps >= 1")
        solution = [torch.zeros_like(v) for v in vector]
        residual = [v.clone() for v in vector]
        direction = [v.clone() for v in vector]
        residual_sq = dot(residual, residual)
        threshold = (tolerance**2) * residual_sq
        for _ in range(steps):
            if residual_sq <= threshold:
                break
            curvature_direction = damped(direction)
            curvature = dot(direction, curvature_direction)
            if curvature <= 0:
                break
            alpha = residual_sq / curvature
            solution = [s + alpha * d for s, d in zip(solution, direction)]
            residual = [r - alpha * c for r, c in zip(residual, curvature_direction)]
            new_residual_sq = dot(residual, residual)
            direction = [r + (new_residual_sq / residual_sq) * d for r, d in zip(residual, direction)]
            residual_sq = new_residual_sq
        return solution
    raise OptimizerError(f"inverse_hvp: unknown method {method!r}; use 'identity', 'neumann' or 'cg'")


def pathwise_backward(outputs: Tensor | Sequence[Tensor], mixed_grad: MixedGrad, direction: Sequence[Tensor]) -> None:
    """The pathwise outer gradient: accumulate ``-d/dpsi [u . dL_train(theta, x(psi))/dtheta]``
    into the ``.grad`` of whatever ``outputs`` (x(psi), rendered with their graph to psi) depend
    on, by ``torch.autograd.backward(x, -mixed_grad(u))`` — the renderer's backward is autograd's.
    Freeze the renderer's own weights (NeRF fields), or their ``.grad`` accumulates too."""
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    if not any(x.requires_grad for x in outputs):
        raise OptimizerError("pathwise_backward: the outputs carry no graph to psi (render them from Psi.replay)")
    grads = mixed_grad([u.detach() for u in direction])
    if len(grads) != len(outputs):
        raise OptimizerError(f"pathwise_backward: mixed_grad gave {len(grads)} tensors for {len(outputs)} outputs")
    pairs = [(x, -g) for x, g in zip(outputs, grads) if x.requires_grad]
    torch.autograd.backward([x for x, _ in pairs], [g for _, g in pairs])


def implicit_hypergradient(
    val_grad: Sequence[Tensor],
    hvp: HVP,
    mixed_grad: MixedGrad,
    outputs: Tensor | Sequence[Tensor],
    *,
    method: InverseMethod = "neumann",
    steps: int = 10,
    damping: float = 0.0,
    scale: float = 1.0,
    tolerance: float = 1e-6,
    direct_loss: Tensor | None = None,
) -> TensorList:
    """Accumulate the implicit hypergradient ``dL_val/dpsi`` into psi's ``.grad``; return ``u``.

    ``val_grad`` is ``dL_val/dtheta`` at the inner solution, ``hvp`` multiplies by the training
    loss's Hessian in theta, ``mixed_grad`` maps ``u`` to ``d/dx [u . dL_train/dtheta]`` and
    ``outputs`` are x(psi). ``u = (H + damping)^-1 val_grad`` by :func:`inverse_hvp`. When the
    validation loss also depends on psi directly (not through theta), pass that part as
    ``direct_loss`` (a scalar with a graph to psi): its gradient is added.
    """
    u = inverse_hvp(hvp, val_grad, method=method, steps=steps, damping=damping, scale=scale, tolerance=tolerance)
    pathwise_backward(outputs, mixed_grad, u)
    if direct_loss is not None:
        direct_loss.backward()
    return u
