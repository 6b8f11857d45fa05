"""The engine: round loop, client sampling, strategies, checkpoints, metrics events.

Never imports typer or rich: it emits events (fedctl.core.events) that the CLI renders.
"""
