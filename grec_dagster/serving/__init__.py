"""Recommendations for one user at the command line, from the trained towers, answered from a
small on-disk index so a call costs a NumPy import and a few matrix-vector products."""
