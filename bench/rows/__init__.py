"""The bench's rows, one module each; bench.py runs those asked for, in order."""
