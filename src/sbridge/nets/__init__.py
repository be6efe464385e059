"""Networks: plain ``nn.Module``s with ``forward(x, t, cond=None)`` (time MLP, UNet), their time and condition
embeddings, the autoencoders of the latent bridge, and :func:`.registry.make_network` to build them by name."""

from sbridge.nets.registry import make_network, network_config

__all__ = ["make_network", "network_config"]
