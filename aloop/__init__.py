"""aloop: choose which configurations deserve a QMC energy, and fine-tune MACE on what comes back."""
import mace  # noqa: F401  (mace before e3nn: its pinned e3nn needs this order on recent torch)

__version__ = "0.1.0"
