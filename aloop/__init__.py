"""aloop: choose which configurations deserve a QMC energy, and fine-tune MACE on what comes back."""
import contextlib
import io
import warnings

# mace before e3nn: its pinned e3nn needs this order on recent torch. On import, mace prints a notice
# about an optional GPU accelerator (cuequivariance) and e3nn warns about torch.load defaults, on
# every command; nothing a user can act on.
with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mace.modules  # noqa: F401

__version__ = "0.1.0"
