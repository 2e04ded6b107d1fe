"""attgmae.engine: the supervised run machinery shared by fine-tuning and the dense tasks."""
