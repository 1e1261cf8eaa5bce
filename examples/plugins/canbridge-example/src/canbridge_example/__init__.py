"""An example canbridge plugin (see derate.py)."""
