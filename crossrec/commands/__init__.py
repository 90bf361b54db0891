"""Sub-commands of the `crossrec` CLI; every module here exposes ``register(app)``."""
