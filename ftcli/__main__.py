"""`python -m ftcli` and `accelerate launch -m ftcli ...`."""

from ftcli.cli import app

if __name__ == "__main__":
    app(prog_name="ftcli")
