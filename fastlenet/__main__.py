import sys

from .cli import main

if __name__ == "__main__":  # pool workers (mpi4py.futures) import this module without running it
    sys.exit(main())
