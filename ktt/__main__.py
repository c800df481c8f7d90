import sys

from .errors import missing_dependency

try:
    from .cli import main
except ModuleNotFoundError as e:  # click itself missing: no environment at all
    if (why := missing_dependency(e)) is None:
        raise
    print(f"error: {why}", file=sys.stderr)
    sys.exit(2)

main()
