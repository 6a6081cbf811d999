"""cgan: a conditional GAN for handwritten digits, as a PyTorch Lightning project."""

__version__ = "0.1.0"
