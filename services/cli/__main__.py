"""``python -m services.cli``: the rxtrail command line."""

from services.cli import app

if __name__ == "__main__":
    app()
