"""How a classifier adapts its backbone: one module per training method, each a `Method`
(base.py) that says how many top blocks it trains and makes them trainable. Adding a method is
a module defining `METHOD` and a line in REGISTRY."""

from mlx_rsg.errors import UserError
from mlx_rsg.model.methods import freeze, heads, lora, mlp_adapter
from mlx_rsg.model.methods.base import Method

REGISTRY: dict[str, Method] = {
    m.name: m for m in (heads.METHOD, freeze.METHOD, lora.METHOD, mlp_adapter.METHOD)
}
METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise UserError(f"--method: {name!r} is not one of {', '.join(METHODS)}")
    return REGISTRY[name]
