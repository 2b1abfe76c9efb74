"""`crepe train`: the run folder, the checkpointed state, one epoch, and the loop."""
