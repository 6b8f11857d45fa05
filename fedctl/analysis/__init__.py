"""What `fedctl inspect` reads and draws: checkpoint summaries, parameter deltas, run curves."""
