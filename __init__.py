# This file is not part of the ftcli package (that is ftcli/ below). It is here for one case: a
# script or `python -m ftcli` started in the folder that holds this checkout, when the checkout's
# folder is named `ftcli` (what a plain `git clone` makes). Python then finds this folder before
# the installed package; without this file it would import it as an empty namespace package and
# fail later with "cannot import name ... (unknown location)". Say what happened instead. (Only
# under that name: pytest imports this folder too, as a package of another name.)
if __name__ == "ftcli":
    import os as _os

    raise ImportError(
        f"{_os.path.dirname(_os.path.abspath(__file__))} is a checkout of the ftcli repository, not the ftcli "
        "package: Python found it because it was started in the folder above it; run from another folder, or "
        "rename the checkout (git clone <url> ftcli-src)"
    )
