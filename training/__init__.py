"""Training and evaluation: data loaders, trainers, metrics, CLIs."""
