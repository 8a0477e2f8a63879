"""`python -m polarpack ...` runs the command line (also under torchrun)."""

from polarpack_cli.main import main

if __name__ == "__main__":
    main()
