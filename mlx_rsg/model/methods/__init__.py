"""How a classifier adapts its backbone: one module per training method, each a `Method`
(base.py) that says how many top blocks it trains and makes them trainable. Adding a method is
a module defining `METHOD` and a line in REGISTRY.

The modules import MLX, so they load when a method is first asked for (`get`): the method names
serve the CLI's options (`mlx-rsg --help` imports no MLX)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from mlx_rsg.errors import UserError

if TYPE_CHECKING:
    from mlx_rsg.model.methods.base import Method

# the method's name -> its module in this package
REGISTRY: dict[str, str] = {
    "heads": "heads",
    "freeze": "freeze",
    "lora": "lora",
    "mlp-adapter": "mlp_adapter",
}
METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise UserError(f"--method: {name!r} is not one of {', '.join(METHODS)}")
    method = import_module(f"{__name__}.{REGISTRY[name]}").METHOD
    assert method.name == name, (name, method.name)
    return method
