"""The `imgclf` command line: main.py (`main(argv) -> int`, exit codes, logging), commands.py (the table of
commands, the parser generated from it, the dispatcher), options.py (each command's options object), console.py
(stdout and process helpers), and run_*.py (the functions that run the commands, imported only when one runs)."""
