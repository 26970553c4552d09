"""The configs that ship with bigvar, one file per model family or job (installed as the package
`bigvar.configs`; in a checkout this folder is `configs/`).

Name one on the command line in any of these forms, from any directory:
`--config=configs/var_d30.py`, `--config=var_d30.py` or `--config=var_d30` (a file of that path
that exists, e.g. your own copy, is used instead). `python -m bigvar.main --list_configs` lists them.
"""
