import sys

from dlnpipe.cli import main

if __name__ == "__main__":
    sys.exit(main())
