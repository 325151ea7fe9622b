import sys

if __name__ == "__main__":  # pool workers (mpi4py.futures) import this module without running it
    from .interrupt import ctrl_c_outside_fragile_code
    with ctrl_c_outside_fragile_code():  # from the first import on
        from .cli import main
        code = main()
    sys.exit(code)
