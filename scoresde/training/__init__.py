"""The learning layer: networks, losses, data sets, run configs, checkpoints and the trainer.

Builds on the math core (scoresde.sde, oracle, convert, likelihood) and never on evaluation
or the CLI.  Nothing here is imported by `import scoresde`."""
