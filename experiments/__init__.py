"""Experiments of `linfeat reproduce`: one script per figure or table (linfeat/_reproduce.py)."""
