import click
from hpatk.core import Enhancer, hookimpl


class Gamma(Enhancer):
    """x ** gamma, per channel. Shape: (B, C, H, W) in [0, 1] -> same."""

    name = "gamma"

    def __init__(self, gamma: float = 0.5):
        super().__init__(gamma=float(gamma))

    def forward(self, x):
        return x.clamp(0, 1) ** self.params["gamma"]


@hookimpl
def hpatk_register_enhancers(register):
    register("gamma", Gamma, aliases=("pow",), description="gamma correction")


@hookimpl
def hpatk_register_commands(cli):
    @cli.command()
    @click.argument("value", type=float)
    def gamma_table(value):
        """Print what gamma VALUE does to a few gray levels."""
        for level in (0.1, 0.5, 0.9):
            click.echo(f"{level} -> {level ** value:.3f}")
