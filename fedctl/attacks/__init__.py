"""Gradient inversion on federated DeepSpeech 1/2 (`fedctl attack ds1|ds2`), split as breaching does:
case (`case.py`: victim, client update, defences), attack (`objective.py`, `attack.py`: gradient matching
with batched restarts, HFGM), analysis (`analysis.py`: feature metrics, speaker ID), and the utterance loop
(`runner.py`: metrics.csv, resume, plots)."""
