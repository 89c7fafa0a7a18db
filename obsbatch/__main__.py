"""`python -m obsbatch` is the same as the `obsbatch` console script."""

from obsbatch.cli import main

if __name__ == "__main__":
    main()
