"""`python -m tfship` is the same as the `tfship` console script."""

from tfship.cli import main

if __name__ == "__main__":
    main()
