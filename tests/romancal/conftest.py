# compare_romancal.py is a standalone script run in its own environment (romancal 1.1 pins
# roman_datamodels < 1.2 and romanisim < 0.15): see README.md. pytest must not import it.
collect_ignore = ["compare_romancal.py"]
