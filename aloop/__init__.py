"""aloop: choose which configurations deserve a QMC energy, and fine-tune MACE on what comes back.

Importing the package loads nothing heavy: the model stack (torch, e3nn, MACE) comes with
`aloop.backbone`, so the store, the report and `aloop status` start without it.
"""

__version__ = "0.1.0"
