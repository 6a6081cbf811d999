"""Train the conditional GAN: ``python train.py --max_epochs 200`` (see ``--help``)."""

from cgan.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
