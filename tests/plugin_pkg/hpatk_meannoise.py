"""A throw-away third-party synthesizer for the tests: each class's mean training image
plus Gaussian noise, implementing the :class:`hpatk.core.Synthesizer` contract the way
any plugin would (torch imported inside the factory)."""

from hpatk.core import hookimpl


def _mean_noise(**params):
    import numpy as np
    import torch
    from hpatk.core import Synthesizer

    class MeanNoiseSynthesizer(Synthesizer):
        name = "meannoise"
        per_class = True

        def __init__(self, noise=8.0, latent_dim=16, image_size=None, channels=None):
            super().__init__(noise=float(noise), latent_dim=int(latent_dim),
                             image_size=image_size, channels=channels)
            self.mean = None

        def fit(self, images, labels, *, classes, out_dir=None, seed=0, progress=True,
                resume=False, stains=()):
            images = np.asarray(images)
            self.params.update(image_size=int(images.shape[-1]), channels=int(images.shape[1]))
            self.mean = torch.from_numpy(images.astype(np.float32).mean(0))
            return {"images": len(images)}

        def _proj(self):
            c, s = self.params["channels"], self.params["image_size"]
            g = torch.Generator().manual_seed(1234)
            return torch.randn(self.latent_dim, c * s * s, generator=g) * self.params["noise"]

        def sample(self, n, labels=None, *, seed=0):
            z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
            x = self.mean[None] + (z @ self._proj()).view(n, *self.mean.shape)
            return x.round().clamp(0, 255).to(torch.uint8).numpy()

        def state_dict(self):
            return {"mean": self.mean.clone()}

        def load_state_dict(self, state):
            self.mean = state["mean"].float()

        def export_module(self):
            mean = self.mean / 255.0
            proj = (self._proj() / 255.0).view(self.latent_dim, *mean.shape)

            class Graph(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.register_buffer("mean", mean)
                    self.register_buffer("proj", proj)

                def forward(self, noise):
                    x = self.mean[None] + torch.einsum("bl,lchw->bchw", noise, self.proj)
                    return x.clamp(0, 1)

            return Graph().eval()

    return MeanNoiseSynthesizer(**params)


@hookimpl
def hpatk_register_synthesizers(register):
    register("meannoise", _mean_noise, description="class-mean image plus noise (example)")
