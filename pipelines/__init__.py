"""The stages as orchestration: loaders -> models -> writers; the training loop."""
